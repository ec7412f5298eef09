"""The compiled structures policies are built on, against plain-Python models of them."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from moesim.policies import belady
from moesim.policies._tournament import (EMPTY, MAX_KEY, new_tournament, tournament_max, tournament_remove,
                                         tournament_set)
from moesim.trace import access_stream

from helpers import make_trace


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=3), st.booleans(), st.data())
def test_tournament_max_is_the_largest_key_of_a_free_expert(capacities, defer, data):
    # defer (timed mode's lazy keys) must not change any answer, whatever is busy when
    num_items = 12
    part_capacity = np.array(capacities, np.int64)
    part_of = np.array([i % len(capacities) for i in range(num_items)], np.int32)
    tree = new_tournament(num_items, part_capacity, defer=defer)
    keys = {}  # the model: resident expert -> key
    for _ in range(data.draw(st.integers(1, 60))):
        x = data.draw(st.integers(0, num_items - 1))
        p = int(part_of[x])
        members = [y for y in keys if part_of[y] == p]
        op = data.draw(st.sampled_from(["set", "remove", "max"]))
        if op == "set" and (x in keys or len(members) < capacities[p]):
            keys[x] = data.draw(st.integers(0, MAX_KEY))
            tournament_set(tree, p, x, keys[x])
        elif op == "remove" and x in keys:
            del keys[x]
            tournament_remove(tree, p, x)
        elif op == "max":
            busy = np.array(data.draw(st.lists(st.booleans(), min_size=num_items, max_size=num_items)), np.uint8)
            free = [y for y in members if not busy[y]]
            # keys may tie in the model; any expert holding the largest key is right
            want = {y for y in free if keys[y] == max(keys[z] for z in free)} if free else {-1}
            assert tournament_max(tree, p, busy) in want
            want_any = {y for y in members if keys[y] == max(keys[z] for z in members)} if members else {-1}
            assert tournament_max(tree, p, None) in want_any
    assert EMPTY < 0


def test_a_deferred_key_survives_its_expert_being_passed_over_at_the_root():
    # timed mode: expert 0 gets a new, small key while its leaf still holds its old, largest one
    tree = new_tournament(2, np.array([2], np.int64), defer=True)
    tournament_set(tree, 0, 0, 5)
    tournament_set(tree, 0, 1, 3)
    assert tournament_max(tree, 0, None) == 0  # both keys filed
    tournament_set(tree, 0, 0, 1)  # deferred: the leaf keeps 5
    assert tournament_max(tree, 0, np.array([1, 0], np.uint8)) == 1  # 0 is busy at the root: passed over
    assert tournament_max(tree, 0, None) == 1  # 0 is free again, under its new key 1 < 3
    tournament_remove(tree, 0, 1)
    assert tournament_max(tree, 0, None) == 0
    tournament_remove(tree, 0, 0)
    assert tournament_max(tree, 0, None) == -1


def test_belady_files_a_prefetched_expert_under_its_next_use_after_the_insert():
    # one layer of four experts, top-1; the stream is 0 1 2 0 3 1 2
    trace = make_trace([[[e]] for e in (0, 1, 2, 0, 3, 1, 2)], num_experts=4, top_k=1)
    stream = access_stream(trace)
    assert stream.item.tolist() == [0, 1, 2, 0, 3, 1, 2]
    state = belady.init(4, np.zeros(4, np.int32), np.array([2], np.int64), stream, {})
    belady.on_insert(state, 0, 0, 0)  # a demand access at 0: next use 3
    belady.on_insert(state, 2, 0, 1)  # a prefetch after position 1: next use 2
    assert belady.victim(state, 0, None, 0) == 0
    belady.on_hit(state, 2, 0, 2)  # next use 6
    assert belady.victim(state, 0, None, 0) == 2
    belady.on_hit(state, 0, 0, 3)  # never used again
    assert belady.victim(state, 0, None, 0) == 0
    belady.on_evict(state, 0, 0)
    belady.on_insert(state, 1, 0, 4)  # a prefetch after position 4: next use 5, before 2's
    assert belady.victim(state, 0, None, 0) == 2
    belady.on_evict(state, 2, 0)
    belady.on_insert(state, 3, 0, 4)  # a prefetch of an expert never used after 4: it goes first
    assert belady.victim(state, 0, None, 0) == 3
    busy = np.zeros(4, np.uint8)
    busy[3] = 1
    assert belady.victim(state, 0, busy, 0) == 1
