"""The README's tables are generated from the registries and the config: a stale one fails here."""
from pathlib import Path

from moesim import docs

ROOT = Path(__file__).resolve().parents[1]


def test_readme_tables_are_generated_from_the_code():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert docs.render(text) == text, "run `python -m moesim.docs` to refresh the README's tables"


def test_every_registered_name_is_in_the_readme():
    from moesim import policies
    from moesim.config import KNOBS
    from moesim.predict import PREDICTORS
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in [*policies.names(), *PREDICTORS.names()]:
        assert f"`{name}" in text, name
    for knob in KNOBS:
        assert f"`{knob.option}`" in text, knob.option
