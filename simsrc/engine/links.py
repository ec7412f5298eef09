"""The links' scheduling: copy engines (or read threads), lanes and stripes, shared by the host -> GPU link
(timed.py) and the storage -> host link (tiers.py). Times are float64 seconds."""
from numba import njit


@njit(cache=True, _nrt=False)
def _first_free_engine(eng_free):
    e = 0
    for k in range(1, eng_free.shape[0]):
        if eng_free[k] < eng_free[e]:
            e = k
    return e


@njit(cache=True, _nrt=False)
def _on_lanes(lanes, t0, seconds, stripes):
    """A transfer's bytes as `stripes` equal parts, each taken by the earliest free lane (a work queue, as
    read threads take jobs), none before t0; returns when the last part lands. seconds: all its bytes on one
    lane."""
    part = seconds / stripes
    done = 0.0
    for k in range(stripes):
        lane = _first_free_engine(lanes)
        d = max(t0, lanes[lane]) + part
        lanes[lane] = d
        done = max(done, d)
    return done


@njit(cache=True, _nrt=False, inline="always")  # in the loop's own code: the one-lane path stays as cheap as it was
def _transfer(issue_t, eng_free, pipe, latency_s, seconds, stripes):
    """Schedule one transfer whose bytes take `seconds` on one lane (its bytes / one lane's bandwidth): on the
    first free copy engine, after its latency, its parts on the first free lanes; returns its arrival time.
    pipe: each lane's free time, then as many scratch entries (for _arrival)."""
    e = _first_free_engine(eng_free)
    start = max(issue_t, eng_free[e])
    if pipe.shape[0] == 2 and stripes == 1:  # one lane, one part: the shared pipe (the hot path)
        done = max(start + latency_s, pipe[0]) + seconds
        pipe[0] = done
    else:
        done = _on_lanes(pipe[:pipe.shape[0] // 2], start + latency_s, seconds, stripes)
    eng_free[e] = done
    return done


@njit(cache=True, _nrt=False)
def _arrival(issue_t, eng_free, pipe, latency_s, seconds, stripes):
    """When a transfer issued at issue_t would land, without scheduling it (what an action rule weighs)."""
    e = _first_free_engine(eng_free)
    start = max(issue_t, eng_free[e])
    if pipe.shape[0] == 2 and stripes == 1:
        return max(start + latency_s, pipe[0]) + seconds
    n = pipe.shape[0] // 2
    for k in range(n):  # worked out on the scratch half, the lanes as they are
        pipe[n + k] = pipe[k]
    return _on_lanes(pipe[n:], start + latency_s, seconds, stripes)
