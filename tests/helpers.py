"""Small traces built in code, for tests that need exact control."""
import numpy as np

from moesim.trace import Trace, TraceMeta


def make_trace(routes, *, num_experts, top_k, requests=None, phase=1, bytes_per_expert=1_000_000,
               dense_bytes=1_000_000, dtype="bfloat16", steps=None, num_layers=None):
    """routes: [token][layer] -> list of top_k expert ids; one token per step, one request unless given."""
    n_tok = len(routes)
    n_layers = len(routes[0])
    req = np.zeros(n_tok, int) if requests is None else np.asarray(requests)
    pos = np.zeros(n_tok, int)
    for r in np.unique(req):
        pos[req == r] = np.arange((req == r).sum())
    step = np.arange(n_tok) if steps is None else np.asarray(steps)
    meta = TraceMeta(model="test", num_layers=num_layers or n_layers, moe_layers=list(range(n_layers)),
                     num_experts=num_experts, top_k=top_k, bytes_per_expert=bytes_per_expert,
                     dense_bytes_per_layer=dense_bytes, dtype=dtype)
    ids = np.array([routes[t][l] for t in range(n_tok) for l in range(n_layers)]).reshape(-1, top_k)
    return Trace.from_arrays(
        meta, request_id=np.repeat(req, n_layers), phase=np.repeat(np.broadcast_to(phase, n_tok), n_layers),
        step=np.repeat(step, n_layers), token_pos=np.repeat(pos, n_layers), layer=np.tile(np.arange(n_layers), n_tok),
        expert_ids=ids)


def random_routes(rng, tokens, layers, experts, top_k, skew=1.2):
    """Zipf-skewed routes with some token-to-token reuse, like real routers."""
    w = 1.0 / np.arange(1, experts + 1) ** skew
    routes = []
    prev = None
    for t in range(tokens):
        tok = []
        for l in range(layers):
            if prev is not None and rng.random() < 0.3:
                tok.append(list(prev[l]))
            else:
                perm = rng.permutation(experts)
                tok.append(list(rng.choice(perm, size=top_k, replace=False, p=w[perm] / w[perm].sum())))
        routes.append(tok)
        prev = tok
    return routes
