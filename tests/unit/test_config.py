import pytest

from tailorlm.config import apply_overrides, load_yaml, parse_override
from tailorlm.errors import ConfigError
from tailorlm.training.config import DEFAULT_LR, resolve_config

BASE = {"model": "m", "objective": "sft", "method": "lora", "data": "train.jsonl", "output": "out"}


def test_overrides_parse_yaml_values_and_win_over_the_recipe():
    assert parse_override("train.lr=3e-4") == (["train", "lr"], 3e-4)
    assert parse_override("lora.target_modules=[q_proj, v_proj]") == (["lora", "target_modules"], ["q_proj", "v_proj"])
    merged = apply_overrides({"train": {"lr": 1.0, "seed": 3}}, ["train.lr=0.5", "lora.r=8"])
    assert merged == {"train": {"lr": 0.5, "seed": 3}, "lora": {"r": 8}}


def test_recipe_values_then_command_line_then_set(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: m\nobjective: sft\nmethod: lora\ndata: d.jsonl\noutput: o\ntrain:\n  max_steps: 10\n  lr: 0.001\n")
    config = resolve_config(recipe, values={"train.max_steps": 3}, overrides=["train.lr=5e-4"])
    assert config.train.max_steps == 3 and config.train.lr == 5e-4
    assert config.data == {"train": "d.jsonl"}
    assert config.base_dir == str(tmp_path.resolve())


def test_quick_merges_its_section_over_the_recipe_and_flags_still_win(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: m\nobjective: pretrain\nmethod: full\ndata: d.txt\noutput: runs/full\n"
                      "train: {max_steps: 200, lr: 0.002, eval_every: 25}\n"
                      "quick: {output: runs/short, train: {max_steps: 20, eval_every: 5}}\n")
    full = resolve_config(recipe)
    assert (full.output, full.train.max_steps, full.train.eval_every) == ("runs/full", 200, 25)
    short = resolve_config(recipe, quick=True)
    assert (short.output, short.train.max_steps, short.train.eval_every, short.train.lr) == ("runs/short", 20, 5, 0.002)
    flagged = resolve_config(recipe, quick=True, values={"train.max_steps": 7}, overrides=["train.eval_every=1"])
    assert (flagged.train.max_steps, flagged.train.eval_every) == (7, 1)


def test_quick_without_a_quick_section_says_how_to_shorten_the_run(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: m\nobjective: sft\nmethod: lora\ndata: d.jsonl\noutput: o\n")
    with pytest.raises(ConfigError, match=r"r.yaml: the recipe has no quick: section \(key 'quick'\).*--max-steps"):
        resolve_config(recipe, quick=True)
    recipe.write_text("model: m\nobjective: sft\nmethod: lora\ndata: d.jsonl\noutput: o\nquick: 20\n")
    with pytest.raises(ConfigError, match="quick: must be a mapping"):
        resolve_config(recipe, quick=True)


def test_default_learning_rate_depends_on_method():
    assert resolve_config(values={**BASE, "method": "full"}).train.lr == DEFAULT_LR["full"] == 2e-5
    assert resolve_config(values=BASE).train.lr == DEFAULT_LR["lora"]


@pytest.mark.parametrize(
    "change, key, needle",
    [
        ({"method": "lorra"}, "method", "Did you mean 'lora'?"),
        ({"objective": "chat"}, "objective", "pretrain, sft, classify, seq2seq"),
        ({"objective": "pretrain", "method": "p_tuning"}, "method", "for pretrain: full, freeze, lora, dora, ia3"),
        ({"train.lr": -1}, "train.lr", "must be positive"),
        ({"train.lr": 0}, "train.lr", "must be positive"),
        ({"train.batch_size": 0}, "train.batch_size", "at least 1"),
        ({"train.schedule": "cosin"}, "train.schedule", "Did you mean 'cosine'?"),
        ({"train.max_step": 3}, "train.max_step", "Did you mean 'max_steps'?"),
        ({"method": "freeze"}, "freeze", "last_n_layers"),
        ({"train.max_steps": "many"}, "train.max_steps", "a whole number"),
    ],
)
def test_bad_settings_name_the_key_and_what_is_allowed(change, key, needle):
    with pytest.raises(ConfigError) as err:
        resolve_config(values={**BASE, **change})
    assert err.value.key == key
    assert needle in str(err.value)
    assert str(err.value).startswith("<command line>")


def test_missing_required_setting():
    with pytest.raises(ConfigError, match="missing setting.*'output'"):
        resolve_config(values={k: v for k, v in BASE.items() if k != "output"})


def test_yaml_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: m\ntrain:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml, line \d+: recipe is not valid YAML"):
        load_yaml(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_yaml(lst)
    with pytest.raises(ConfigError, match="recipe not found"):
        load_yaml(tmp_path / "missing.yaml")
