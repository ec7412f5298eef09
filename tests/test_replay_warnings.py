"""What the row and the CLI say about a configuration that misleads: a cache below one token's footprint,
figures that are not the preset's."""
from click.testing import CliRunner
from conftest import TRACES

import moesim
from moesim.cli import main

MIXTRAL = TRACES / "mixtral-8x7b-speculative-decode.parquet"  # 32 MoE layers, top-2: 64 experts a token


def test_a_global_cache_below_one_tokens_footprint_is_flagged_in_the_row_and_on_the_cli():
    below = moesim.replay(MIXTRAL, capacity=26, mode="count")
    at = moesim.replay(MIXTRAL, capacity=64, mode="count")
    per_layer = moesim.replay(MIXTRAL, capacity="1/layer", scope="per-layer", mode="count")
    assert below["token_footprint"] == 64 and below["below_token_footprint"]
    assert not at["below_token_footprint"] and not per_layer["below_token_footprint"]
    out = CliRunner().invoke(main, ["replay", str(MIXTRAL), "--capacity", "26", "--mode", "count"]).output
    assert "smaller than one token's 64" in out


def test_an_overridden_link_says_so_next_to_the_presets_name():
    out = CliRunner().invoke(main, ["replay", str(MIXTRAL), "--capacity", "64", "--bandwidth", "10GB/s",
                                    "--latency", "20us"]).output
    assert "hardware a100-pcie4 (bandwidth, latency overridden)" in out
    plain = CliRunner().invoke(main, ["replay", str(MIXTRAL), "--capacity", "64"]).output
    assert "hardware a100-pcie4:" in plain
