"""Each concept kvbench has several of is declared once, in a registry, and everything that offers or reads the
concept takes it from there: a new entry (docs/contributing.md's recipes) reaches --help, the checks and the
readers without a second list to keep in step."""

from dataclasses import replace

import pytest
from typer.testing import CliRunner

from kvbench.cli import app
from kvbench.compare.formats import FORMATS, format_named
from kvbench.core.errors import KvbenchError
from kvbench.core.metrics import JUDGED_METRICS
from kvbench.launch.registry import LAUNCHERS
from kvbench.model.caches import CACHE_IMPLEMENTATIONS, IMPLEMENTATIONS, CacheImplementation, implementation
from kvbench.model.modes import MODES, MODES_BY_NAME
from kvbench.model.settings import BenchConfig, config_fields
from kvbench.model.validation import validate
from tests.conftest import make_result

runner = CliRunner()


def help_of(*command: str) -> str:
    """A command's --help as one line of words: the box Rich draws around the options taken away."""
    text = runner.invoke(app, [*command, "--help"]).output
    return " ".join(text.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())


def test_every_cache_implementation_is_a_choice_and_declares_what_readers_need():
    assert config_fields()["cache_implementation"].metadata["choices"] == CACHE_IMPLEMENTATIONS == tuple(IMPLEMENTATIONS)
    assert [cache.name for cache in IMPLEMENTATIONS.values() if cache.reference] == ["dynamic"]
    for name, cache in IMPLEMENTATIONS.items():
        assert isinstance(cache, CacheImplementation) and cache.name == name
        assert cache.formula and cache.bits(BenchConfig()) and cache.settings_problem(BenchConfig()) is None
        validate(BenchConfig(cache_implementation=[name]))
    # A name from a later version still renders: a cache with no rules of its own.
    assert implementation("paged").formula == IMPLEMENTATIONS["dynamic"].formula


def test_every_mode_is_a_choice_with_its_words_and_colour():
    assert config_fields()["modes"].metadata["choices"] == MODES == tuple(MODES_BY_NAME)
    kinds = [(mode.use_cache, mode.reuses_prefix) for mode in MODES_BY_NAME.values()]
    assert kinds == [(True, False), (False, False), (True, True)]
    assert len({mode.colour for mode in MODES_BY_NAME.values()}) == len(MODES)


def test_every_judged_metric_is_offered_to_the_gate_and_read_from_a_run():
    gate_help = help_of("compare")
    first = make_result().runs[0]
    run = replace(first, time_to_first_token_s=first.latency_s / 10)
    for metric in JUDGED_METRICS.values():
        assert f"{metric.name} ({metric.help})" in gate_help
        assert metric.per_run(run) is not None and metric.mean_field.endswith("_s")


def test_every_format_is_offered_by_compare_and_renders():
    format_help = help_of("compare")
    for name, output in FORMATS.items():
        assert name in format_help and format_named(name) is output
    with pytest.raises(KvbenchError, match="choose one of table, markdown"):
        format_named("yaml")


def test_every_launcher_setting_has_a_launcher():
    """The setting's choices and the registry name the same launchers: neither can gain one alone."""
    assert sorted(LAUNCHERS) == sorted(config_fields()["launcher"].metadata["choices"])
