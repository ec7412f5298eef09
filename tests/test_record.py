"""The recorder against each architecture's own routing, computed independently.

Reference: each request alone, unpadded, in one teacher-forced forward pass
over prompt + generated tokens (no KV cache, no batching), with our own
pre-hooks on the expert containers capturing the (indices, weights) the
experts actually receive. The recorder, in contrast, hooks the routers during
batched, left-padded, cached generation. Agreement row for row pins down
positions, steps, layers, padding exclusion and the weights as applied.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import moesim  # noqa: E402
from moesim.record import Prompt, UnsupportedModel, record  # noqa: E402
from moesim.record.prompts import prompt_digest  # noqa: E402
from moesim.trace import read_meta  # noqa: E402
from moesim.record.tiny import ARCHITECTURES, tiny_model  # noqa: E402

PROMPT_IDS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18], [3], [20, 21, 22, 23]]
BATCH, NEW = 2, 4


def prompts(ids=PROMPT_IDS):
    return [Prompt(i, None, list(x), prompt_digest({"input_ids": list(x)})) for i, x in enumerate(ids)]


def plain_generate(model, ids, batch_size, new, pad=0, eos=(2,)):
    """Greedy generation without the recorder, batched and left-padded the same way; cut after EOS."""
    out = {}
    for s in range(0, len(ids), batch_size):
        batch = ids[s:s + batch_size]
        P = max(map(len, batch))
        inp = torch.full((len(batch), P), pad)
        mask = torch.zeros((len(batch), P), dtype=torch.long)
        for b, x in enumerate(batch):
            inp[b, P - len(x):] = torch.tensor(x)
            mask[b, P - len(x):] = 1
        with torch.no_grad():
            gen = model.generate(input_ids=inp, attention_mask=mask, max_new_tokens=new, do_sample=False,
                                 pad_token_id=pad)[:, P:].tolist()
        for b, g in enumerate(gen):
            cut = next((i + 1 for i, t in enumerate(g) if t in eos), len(g))
            out[s + b] = g[:cut]
    return out


def experts_by_layer(model):
    """Layer index -> expert container, found by class name (independent of the recorder's discovery)."""
    found = {}
    for i, layer in enumerate(model.model.layers):
        for mod in layer.modules():
            if type(mod).__name__.endswith("Experts"):
                found[i] = mod
    return found


def routers_by_layer(model):
    found = {}
    for i, layer in enumerate(model.model.layers):
        for mod in layer.modules():
            if "Router" in type(mod).__name__:
                found[i] = mod
    return found


def reference_routing(model, tokens, horizon=0):
    """{(pos, layer): (ids, weights, {h: predicted ids})} from one unpadded forward over `tokens`."""
    experts, routers = experts_by_layer(model), routers_by_layer(model)
    layers = sorted(experts)
    seen, inputs, handles = {}, {}, []
    for layer, mod in experts.items():
        def grab(m, args, layer=layer):
            idx = next(a for a in args[1:] if torch.is_tensor(a) and not a.is_floating_point())
            w = next(a for a in args[1:] if torch.is_tensor(a) and a.is_floating_point())
            seen[layer] = (idx.clone(), w.clone())
        handles.append(mod.register_forward_pre_hook(grab))
    for layer, mod in routers.items():
        handles.append(mod.register_forward_pre_hook(lambda m, args, layer=layer: inputs.__setitem__(layer, args[0].clone())))
    with torch.no_grad():
        model(input_ids=torch.tensor([tokens]), use_cache=False)
        for h in handles:
            h.remove()
        out = {}
        for j, layer in enumerate(layers):
            preds = {}
            for h in range(1, horizon + 1):
                if j + h < len(layers):
                    preds[h] = routers[layers[j + h]](inputs[layer])[2].numpy()
            ids, w = seen[layer]
            for pos in range(len(tokens)):
                out[(pos, layer)] = (ids[pos].numpy(), w[pos].float().numpy(),
                                     {h: p[pos] for h, p in preds.items()})
    return out


def check_against_reference(trace, model, generated, horizon=0):
    t = trace.table.to_pandas()
    ids, w = trace.expert_ids(), trace.expert_weights()
    preds = {h: trace.predictions(h) for h in range(1, horizon + 1)}
    for rid, prompt in enumerate(PROMPT_IDS):
        fed = prompt + generated[rid][:-1]   # the last generated token is never fed back
        ref = reference_routing(model, fed, horizon)
        rows = np.flatnonzero(t.request_id.to_numpy() == rid)
        got = {(int(t.token_pos[r]), int(t.layer[r])): r for r in rows}
        assert set(got) == set(ref), f"request {rid}: recorded (pos, layer) differ from the model's"
        for key, r in got.items():
            ref_ids, ref_w, ref_pred = ref[key]
            assert ids[r].tolist() == ref_ids.tolist(), (rid, key)
            np.testing.assert_allclose(w[r], ref_w, rtol=1e-4, atol=1e-5, err_msg=str((rid, key)))
            assert t.token_id[r] == fed[key[0]]
            for h in range(1, horizon + 1):
                if h in ref_pred:
                    assert preds[h][r].tolist() == ref_pred[h].tolist(), (rid, key, h)
                else:
                    assert (preds[h][r] == -1).all(), "no prediction where layer l+h does not exist"


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_recorded_routing_matches_the_model(arch, tmp_path):
    model = tiny_model(arch)
    plain = plain_generate(model, PROMPT_IDS, BATCH, NEW)
    out = tmp_path / "t.parquet"
    s = record(model, prompts(), out, max_new_tokens=NEW, batch_size=BATCH, record_predictions=2)
    assert s.generated == plain, "recording changed the generated tokens"
    trace = moesim.read_trace(out)
    assert trace.meta.moe_layers == sorted(experts_by_layer(model))
    check_against_reference(trace, model, s.generated, horizon=2)
    # steps: a batch's prefill is one step, then one step per decode pass; batches follow each other
    t = trace.table.to_pandas()
    step0 = 0
    for first in range(0, len(PROMPT_IDS), BATCH):
        reqs = list(range(first, min(first + BATCH, len(PROMPT_IDS))))
        sub = t[t.request_id.isin(reqs)]
        assert set(sub[sub.phase == 0].step) == {step0}
        for r in reqs:
            dec = sub[(sub.request_id == r) & (sub.phase == 1)]
            assert (dec.step - step0 == dec.token_pos - len(PROMPT_IDS[r]) + 1).all()
        step0 += max(len(s.generated[r]) for r in reqs)


def test_finished_requests_stop_recording_while_the_batch_goes_on(tmp_path):
    model = tiny_model("mixtral")
    free = plain_generate(model, PROMPT_IDS, BATCH, 6, eos=())
    # make request 0's second generated token its end-of-sequence, so it ends while request 1 goes on
    stop = free[0][1]
    assert stop not in free[1][:5] and stop not in free[0][:1]
    model.generation_config.eos_token_id = stop
    plain = plain_generate(model, PROMPT_IDS, BATCH, 6, eos=(stop,))
    s = record(model, prompts(), tmp_path / "t.parquet", max_new_tokens=6, batch_size=BATCH)
    assert s.generated == plain and len(s.generated[0]) == 2 and len(s.generated[1]) == 6
    trace = moesim.read_trace(tmp_path / "t.parquet")
    t = trace.table.to_pandas()
    assert t[t.request_id == 0].token_pos.max() == len(PROMPT_IDS[0])  # prompt + 1 fed token, no padding
    check_against_reference(trace, model, s.generated)


def test_weights_follow_the_published_formulas():
    """Mixtral: softmax, top-2, renormalised; GPT-OSS: top-k logits then softmax over them -- from
    output_router_logits of a plain forward, not from any hook."""
    for arch in ("mixtral", "gpt_oss"):
        model = tiny_model(arch)
        tokens = PROMPT_IDS[2]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([tokens]), output_router_logits=True).router_logits
        ref = reference_routing(model, tokens)
        for layer, lg in enumerate(logits):
            lg = lg.double()
            if arch == "mixtral":
                top, idx = torch.softmax(lg, -1).topk(2, -1)
                top = top / top.sum(-1, keepdim=True)
            else:
                vals, idx = lg.topk(2, -1)
                top = torch.softmax(vals, -1)
            for pos in range(len(tokens)):
                ids, w, _ = ref[(pos, layer)]
                assert ids.tolist() == idx[pos].tolist()
                np.testing.assert_allclose(w, top[pos].numpy(), rtol=1e-5)


def test_model_card_from_the_loaded_model(tmp_path):
    model = tiny_model("qwen2_moe")
    record(model, prompts(PROMPT_IDS[:1]), tmp_path / "q.parquet", max_new_tokens=2, batch_size=1,
           model_name="tiny-qwen2-moe")
    m = read_meta(tmp_path / "q.parquet")
    # hidden 32, moe_intermediate 32: gate+up (2*32*32) + down (32*32), float32
    assert (m.model, m.num_layers, m.moe_layers, m.num_experts, m.top_k) == ("tiny-qwen2-moe", 3, [0, 2], 8, 2)
    assert m.bytes_per_expert == 3 * 32 * 32 * 4 and m.shared_experts == 1 and m.dtype == "float32"
    assert m.source["kind"] == "recorder" and m.source["params"]["requests"] == [[0, prompts()[0].digest]]
    dsv3 = tiny_model("deepseek_v3")
    record(dsv3, prompts(PROMPT_IDS[:1]), tmp_path / "d.parquet", max_new_tokens=2, batch_size=1)
    m = read_meta(tmp_path / "d.parquet")
    assert m.moe_layers == [1, 2] and m.shared_experts == 1 and m.extra["model_type"] == "deepseek_v3"


def test_dense_model_gets_a_clear_error(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.for_model("llama", vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2)
    with pytest.raises(UnsupportedModel, match="found no MoE block.*`experts` child.*router"):
        record(AutoModelForCausalLM.from_config(cfg), prompts(), tmp_path / "x.parquet")
    assert not (tmp_path / "x.parquet").exists() and not (tmp_path / "x.parquet.parts").exists()


def _save_tiny_checkpoint(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    tiny_model("mixtral").save_pretrained(folder)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({w: 4 + i for i, w in enumerate("the cat sat on a mat dog ran far away".split())})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(folder)


def test_cli_records_a_saved_checkpoint_with_from_pretrained(tmp_path):
    from click.testing import CliRunner
    from moesim.cli import main
    ckpt = tmp_path / "tiny-mixtral"
    _save_tiny_checkpoint(ckpt)
    lines = [{"prompt": "the cat sat on a mat"}, {"input_ids": [5, 6, 7]}, {"prompt": "dog ran far away"}]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    out = tmp_path / "traces" / "tiny.parquet"
    args = ["record", "--model", str(ckpt), "--prompts", str(tmp_path / "p.jsonl"), "--out", str(out),
            "--max-new-tokens", "3", "--batch-size", "2", "--dtype", "bfloat16", "--record-logits"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "3 requests" in res.output
    trace = moesim.read_trace(out)
    m = trace.meta
    assert m.dtype == "bfloat16" and m.bytes_per_expert == 3 * 64 * 32 * 2 and m.model == str(ckpt)
    t = trace.table.to_pandas()
    prefill0 = t[(t.request_id == 0) & (t.phase == 0) & (t.layer == 0)].token_id.tolist()
    assert prefill0 == [4, 5, 6, 7, 8, 9]  # the tokenizer's ids for the text, no padding
    assert trace.table.column("router_logits").type.list_size == 8
    # a second run to the same file without --resume refuses, naming the way out
    res = CliRunner().invoke(main, args)
    assert res.exit_code != 0 and "--resume" in res.output


def test_interrupted_recording_leaves_a_valid_trace_and_resumes(tmp_path):
    model = tiny_model("olmoe")
    full = tmp_path / "full.parquet"
    record(model, prompts(), full, max_new_tokens=NEW, batch_size=BATCH)

    out = tmp_path / "cut.parquet"
    calls = []

    def stop_after_first_batch(requests, tokens):
        calls.append(requests)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        record(model, prompts(), out, max_new_tokens=NEW, batch_size=BATCH, progress=stop_after_first_batch)
    part = moesim.read_trace(out)
    assert sorted(set(part.column("request_id").tolist())) == [0, 1]
    assert (tmp_path / "cut.parquet.parts").is_dir()

    changed = prompts(PROMPT_IDS[:1] + [[40, 41]] + PROMPT_IDS[2:])
    with pytest.raises(ValueError, match="request 1 was recorded from a different prompt"):
        record(model, changed, out, max_new_tokens=NEW, batch_size=BATCH, resume=True)
    with pytest.raises(ValueError, match="recorded with"):
        record(model, prompts(), out, max_new_tokens=NEW + 1, batch_size=BATCH, resume=True)

    s = record(model, prompts(), out, max_new_tokens=NEW, batch_size=BATCH, resume=True)
    assert (s.requests, s.skipped) == (3, 2)
    assert not (tmp_path / "cut.parquet.parts").exists()
    a, b = moesim.read_trace(out), moesim.read_trace(full)
    assert a.table.equals(b.table) and a.meta == b.meta
    # resuming a finished recording records nothing and keeps the trace
    s = record(model, prompts(), out, max_new_tokens=NEW, batch_size=BATCH, resume=True)
    assert s.requests == 0 and moesim.read_trace(out).table.equals(b.table)


def test_moesim_imports_and_record_explains_without_torch(tmp_path):
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "import moesim, moesim.record\n"
        "from moesim.cli import main\n"
        "main(['record', '--model', 'x', '--prompts', 'p.jsonl', '--out', 'o.parquet'])\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 1
    assert "pip install 'moesim[record]'" in res.stderr and "Traceback" not in res.stderr


def test_bad_prompts_file_names_line_and_field(tmp_path):
    from moesim.record import read_prompts
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "hi"}\n{"text": "no"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl:2: .*neither 'prompt'.*'input_ids'"):
        read_prompts(p)
