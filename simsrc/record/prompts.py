"""Prompts for the recorder: a JSONL file, one request per line.

Each line is an object with either "prompt" (text, tokenised with the
model's tokenizer) or "input_ids" (a list of token ids, used as is). The
line's position (0-based, blank lines skipped) is the request id.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Prompt:
    request_id: int
    text: str | None
    input_ids: list[int] | None
    digest: str          # hash of what the line asks for; --resume checks it

    def tokens(self, tokenizer) -> list[int]:
        if self.input_ids is not None:
            return self.input_ids
        return list(tokenizer(self.text)["input_ids"])


def prompt_digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def read_prompts(path: str | Path) -> list[Prompt]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such prompts file (JSONL, one {{\"prompt\": ...}} or "
                                f"{{\"input_ids\": [...]}} per line)")
    out: list[Prompt] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not a JSON object ({e.msg}); each line must be one object") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected a JSON object with 'prompt' or 'input_ids', got {type(obj).__name__}")
            rid = len(out)
            if "input_ids" in obj:
                ids = obj["input_ids"]
                if not isinstance(ids, list) or not ids or not all(isinstance(t, int) and t >= 0 for t in ids):
                    raise ValueError(f"{where}: 'input_ids' must be a non-empty list of non-negative token ids")
                out.append(Prompt(rid, None, ids, prompt_digest({"input_ids": ids})))
            elif "prompt" in obj:
                text = obj["prompt"]
                if not isinstance(text, str) or not text:
                    raise ValueError(f"{where}: 'prompt' must be a non-empty string")
                out.append(Prompt(rid, text, None, prompt_digest({"prompt": text})))
            else:
                raise ValueError(f"{where}: the object has neither 'prompt' (text) nor 'input_ids' "
                                 f"(token ids); keys found: {sorted(obj)}")
    if not out:
        raise ValueError(f"{path}: no prompts (the file is empty)")
    return out
