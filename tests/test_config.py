import pytest

from kvbench.core.errors import KvbenchError
from kvbench.model.cells import Cell, expand
from kvbench.model.experiment import build_config, load_toml
from kvbench.model.settings import BenchConfig
from kvbench.model.validation import validate

REPO = __import__("pathlib").Path(__file__).resolve().parent.parent


def write(tmp_path, text):
    path = tmp_path / "experiment.toml"
    path.write_text(text)
    return path


def test_defaults_are_the_reference_experiment():
    config = BenchConfig()
    assert config.model == ["gpt2"]
    assert config.prompt == "What is KV caching?"
    assert config.max_new_tokens == [1000]
    assert config.runs == 10
    assert config.modes == ["cached", "uncached"]


def test_shipped_reference_config_matches_the_defaults():
    config = build_config(REPO / "configs" / "gpt2-t4-reference.toml", {})
    defaults = BenchConfig()
    for key in ("model", "prompt", "max_new_tokens", "runs", "modes"):
        assert getattr(config, key) == getattr(defaults, key)


def test_command_line_overrides_the_file(tmp_path):
    path = write(tmp_path, 'model = "tiny-gpt2"\nruns = 5\nmax-new-tokens = [8, 16]\n')
    config = build_config(path, {"runs": 2, "model": None})
    assert config.runs == 2
    assert config.model == ["tiny-gpt2"]
    assert config.max_new_tokens == [8, 16]


def test_scalars_and_lists_both_work_for_sweep_axes(tmp_path):
    config = build_config(write(tmp_path, "batch_size = 4\ndtype = ['float32', 'bfloat16']\n"), {})
    assert config.batch_size == [4]
    assert config.dtype == ["float32", "bfloat16"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("runz = 3", "unknown setting 'runz'"),
        ('runs = "three"', "'runs' must be an integer, got 'three'"),
        ("runs = true", "'runs' must be an integer, got True"),
        ("max_new_tokens = [8, 'x']", "'max_new_tokens' must be an integer or a list of them"),
        ("max_new_tokens = []", "'max_new_tokens' is an empty list"),
        ("runs = 0", "'runs' must be at least 1, got 0"),
        ("max_new_tokens = -5", "'max_new_tokens' must be at least 1, got -5"),
        ('dtype = "float64"', "'dtype' cannot be 'float64'; choose one of auto, float32"),
        ('device = "gpu"', "'device' cannot be 'gpu'; use auto, cpu, cuda or cuda:N"),
        ('modes = ["cached", "fast"]', "'modes' cannot be 'fast'"),
        ("batch_size = [1, 1]", "'batch_size' lists the same value twice"),
        ("runs = [", "not valid TOML"),
    ],
)
def test_bad_files_name_the_file_the_key_and_the_fix(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(KvbenchError) as error:
        build_config(path, {})
    assert message in str(error.value)
    assert str(path) in str(error.value)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(KvbenchError, match="does not exist"):
        load_toml(tmp_path / "nope.toml")


def test_sweep_expands_to_every_combination_in_a_stable_order():
    config = BenchConfig(model=["a", "b"], max_new_tokens=[8, 16], batch_size=[1, 2])
    cells = expand(config)
    assert len(cells) == 8
    assert cells[0] == Cell("a", 8, 1, "auto", "dynamic", "auto")
    assert cells[1] == Cell("a", 8, 2, "auto", "dynamic", "auto")
    assert cells[-1] == Cell("b", 16, 2, "auto", "dynamic", "auto")
    assert len({cell.id for cell in cells}) == 8


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:3"])
def test_validate_accepts_device_names(device):
    config = BenchConfig(device=device)
    validate(config)
    assert config.device == device


@pytest.mark.parametrize("device", ["cuda:", "cuda:x", "gpu", "cuda:1:2", "CPU"])
def test_validate_refuses_other_device_names(device):
    with pytest.raises(KvbenchError, match="'device' cannot be"):
        validate(BenchConfig(device=device))


@pytest.mark.parametrize(("backend", "nbits"), [("quanto", 3), ("quanto", 8), ("hqq", 5)])
def test_validate_refuses_bits_a_quantized_backend_cannot_store(backend, nbits):
    with pytest.raises(KvbenchError, match=f"'quantized_nbits' cannot be {nbits} with the {backend} backend; choose"):
        validate(BenchConfig(cache_implementation=["quantized"], quantized_backend=backend, quantized_nbits=nbits))


def test_the_quantized_cache_settings_go_to_generate_as_its_cache_config():
    from kvbench.model.caches import cache_config

    config = BenchConfig(
        cache_implementation=["static", "quantized"], quantized_nbits=2, quantized_group_size=16, quantized_residual_length=8
    )
    static, quantized = expand(config)
    assert cache_config(config, quantized) == {"backend": "quanto", "nbits": 2, "q_group_size": 16, "residual_length": 8}
    assert cache_config(config, static) is None
    # fp8 is per-tensor: transformers refuses any group-wise setting for it.
    fp8 = BenchConfig(cache_implementation=["quantized"], quantized_backend="fp8")
    assert cache_config(fp8, expand(fp8)[0]) == {"backend": "fp8"}
