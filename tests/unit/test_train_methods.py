"""Every method trains every objective it fits on a tiny random model, and its specialist reloads exactly.

Each case trains 20 steps on a handful of examples that fit in one micro-batch, so every logged loss is the loss
on the whole toy set; dropout is off, so a model that learned nothing would log the same loss at every step. The
trained in-memory model is then compared with the saved specialist (tailorlm's loader, and plain `peft`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import peft
import pytest
import torch
import transformers
from rich.console import Console
from safetensors.torch import load_file

import tailorlm.training.loop as loop
from conftest import CORPUS, build_tiny_t5_tokenizer, build_tiny_tokenizer
from tailorlm.errors import ConfigError
from tailorlm.models.load import load_model
from tailorlm.strategies.adapters import PEFT_METHODS
from tailorlm.strategies.base import load_specialist, read_manifest
from tailorlm.training.checkpoint import checkpoint_dir, list_checkpoints
from tailorlm.training.config import METHODS_FOR_OBJECTIVE, PROMPT_METHODS, resolve_config
from tailorlm.training.objectives import classifier_logits
from tailorlm.training.packing import collate_padded
from tailorlm.training.tracking import read_metrics

STEPS = 20
# Learning rates that make each method memorise the toy sets in STEPS steps (far above real-use defaults).
LR = {"full": 3e-3, "freeze": 1e-2, "lora": 1e-2, "dora": 1e-2, "ia3": 0.3, "prompt_tuning": 0.3, "p_tuning": 0.03,
      "prefix_tuning": 0.3}
METHOD_SETTINGS = {"freeze": ["freeze.last_n_layers=1"], **{m: ["prompt.virtual_tokens=8"] for m in PROMPT_METHODS}}
# model folder, data file and extra data settings for each objective (classify runs on an encoder and a decoder)
SETUPS = {
    "pretrain": [("llama", "text.txt", ["data.text_split=line"])],
    "sft": [("llama", "chat.jsonl", [])],
    "classify": [("bert", "labels.jsonl", []), ("llama", "labels.jsonl", [])],
    "seq2seq": [("t5", "pairs.jsonl", [])],
}
CASES = [(objective, model, method) for objective, setups in SETUPS.items() for model, _, _ in setups
         for method in METHODS_FOR_OBJECTIVE[objective]]
PLAIN_CLASS = {"pretrain": "AutoModelForCausalLM", "sft": "AutoModelForCausalLM",
               "classify": "AutoModelForSequenceClassification", "seq2seq": "AutoModelForSeq2SeqLM"}
LABELS = ["animal", "finance", "law"]


def max_loss_ratio(objective: str, method: str) -> float:
    """How far the last loss must fall below the first; a model that learned nothing stays at 1.0."""
    # A soft prompt on the encoder of a 2-layer random T5 moves the decoder's output by only about one nat.
    return 0.9 if objective == "seq2seq" and method in ("prompt_tuning", "p_tuning") else 0.7


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    """Tiny random Llama (decoder), BERT (encoder, saved without a head like minilm-l6) and T5, plus toy data."""
    root = tmp_path_factory.mktemp("zoo")
    torch.manual_seed(0)
    # Weights drawn wider than the usual 0.02, so that a 32-wide model is expressive enough for adapters and
    # soft prompts to memorise a few examples in 20 steps.
    tok = build_tiny_tokenizer()
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.3, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    _save(root / "llama", llama, tok)
    tok = bert_tokenizer()
    bert = transformers.BertModel(transformers.BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=128, initializer_range=0.3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        pad_token_id=tok.pad_token_id))
    _save(root / "bert", bert, tok)
    tok = build_tiny_t5_tokenizer()
    t5 = transformers.T5ForConditionalGeneration(transformers.T5Config(
        vocab_size=len(tok), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        dropout_rate=0.0, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id))
    _save(root / "t5", t5, tok)

    (root / "text.txt").write_text("\n".join(CORPUS[:4]) + "\n", encoding="utf-8")
    chats = [("What is the capital of France?", "Paris."), ("Say hello.", "hello hi thanks"),
             ("Is the dog lazy?", "The dog is lazy."), ("What should patients check?", "Blood sugar.")]
    _jsonl(root / "chat.jsonl", [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
                                 for q, a in chats])
    labelled = [("the quick brown fox", "animal"), ("the lazy dog", "animal"), ("the court held the statement", "law"),
                ("hearsay statement court", "law"), ("shares rose after earnings", "finance"),
                ("bearish bullish neutral shares", "finance")]
    _jsonl(root / "labels.jsonl", [{"text": t, "label": label} for t, label in labelled])
    pairs = [("the quick brown fox", "fox"), ("the lazy dog", "dog"), ("capital of France", "Paris"),
             ("blood sugar", "diabetes")]
    _jsonl(root / "pairs.jsonl", [{"source": s, "target": t} for s, t in pairs])
    return root


def bert_tokenizer() -> Any:
    """A tiny WordPiece tokenizer with BERT's [CLS] ... [SEP] framing."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(CORPUS * 4, trainer=trainers.WordPieceTrainer(
        vocab_size=200, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False))
    sep, cls = ("[SEP]", tok.token_to_id("[SEP]")), ("[CLS]", tok.token_to_id("[CLS]"))
    tok.post_processor = processors.BertProcessing(sep, cls)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                                cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def _save(folder: Path, model: Any, tokenizer: Any) -> None:
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def run_training(zoo: Path, output: Path, objective: str, model: str, method: str, *, steps: int = STEPS,
                 extra: tuple[str, ...] = (), monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[dict], Any]:
    """Train `zoo/model` on the objective's toy set; returns (the prepared run with the trained model, every
    step's record, the run result)."""
    data, data_settings = next(((d, s) for m, d, s in SETUPS[objective] if m == model), SETUPS[objective][0][1:])
    config = resolve_config(
        values={"model": str(zoo / model), "data": str(zoo / data), "method": method, "objective": objective,
                "output": str(output)},
        overrides=["data.split={}", "train.max_length=64", f"train.max_steps={steps}", f"train.lr={LR[method]}",
                   "train.batch_size=8", "train.tensorboard=false", "train.warmup_steps=0", "train.schedule=constant",
                   *data_settings, *METHOD_SETTINGS.get(method, []), *extra])
    prepared = []
    real_prepare = loop.prepare
    monkeypatch.setattr(loop, "prepare", lambda *a, **k: prepared.append(real_prepare(*a, **k)) or prepared[-1])
    records: list[dict] = []
    result = loop.train(config, callbacks=(lambda step, record: records.append(record),), console=Console(quiet=True))
    return prepared[0], records, result


def probe(objective: str, tokenizer: Any) -> dict[str, torch.Tensor]:
    """A fixed input whose logits must survive saving and loading."""
    text = "<|im_start|>user\nIs the dog lazy?" if objective in ("pretrain", "sft") else "the lazy dog hello"
    ids = torch.tensor([tokenizer(text).input_ids])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if objective == "seq2seq":
        inputs["decoder_input_ids"] = torch.tensor([[tokenizer.pad_token_id, *tokenizer("dog").input_ids]])
    return inputs


@torch.no_grad()
def logits(model: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return model.eval()(**inputs).logits


@pytest.mark.parametrize("objective, model, method", CASES, ids=[f"{o}-{m}-{x}" for o, m, x in CASES])
def test_method_learns_and_its_specialist_reloads_with_identical_logits(zoo, tmp_path, monkeypatch, objective, model,
                                                                       method):
    output = tmp_path / "out"
    run, records, result = run_training(zoo, output, objective, model, method, monkeypatch=monkeypatch)

    first, last = records[0]["loss"], records[-1]["loss"]
    assert last < max_loss_ratio(objective, method) * first, [round(r["loss"], 3) for r in records]
    assert result.steps == STEPS

    inputs = probe(objective, run.tokenizer)
    expected = logits(run.model, inputs)
    reloaded, _, manifest = load_specialist(output)
    assert torch.equal(logits(reloaded, inputs), expected)
    assert (manifest.strategy, manifest.objective, manifest.steps) == (method, objective, STEPS)
    assert manifest.labels == (LABELS if objective == "classify" else None)

    files = {p.name for p in output.iterdir()}
    if method in PEFT_METHODS:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= files and "model.safetensors" not in files
        adapter = json.loads((output / "adapter_config.json").read_text())
        assert adapter["peft_type"] == ("LORA" if method == "dora" else method.upper())
        assert adapter.get("use_dora", False) == (method == "dora")
        # What the rest of the ecosystem does: the base model from its own folder, then the adapter.
        base = getattr(transformers, PLAIN_CLASS[objective]).from_pretrained(
            zoo / model, **({"num_labels": len(LABELS)} if objective == "classify" else {}))
        plain = peft.PeftModel.from_pretrained(base, output)
        assert torch.equal(logits(plain, inputs), expected)
    else:
        assert "model.safetensors" in files and "adapter_config.json" not in files
        assert manifest.weights == "full"


def test_freeze_changes_only_the_last_layer_and_what_follows_it(zoo, tmp_path, monkeypatch):
    run, _, _ = run_training(zoo, tmp_path / "out", "sft", "llama", "freeze", steps=3, monkeypatch=monkeypatch)
    base = load_file(str(zoo / "llama" / "model.safetensors"))
    trained = dict(run.model.named_parameters())
    for name, value in base.items():
        same = torch.equal(trained[name], value)
        assert same == (not (name.startswith("model.layers.1.") or name == "model.norm.weight")), name


def test_sft_on_a_tokenizer_without_chatml_tokens_saves_the_grown_embeddings(zoo, tmp_path, monkeypatch):
    """The template's tokens are added and the embeddings grow; peft must save them so the adapter reloads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS * 4, trainer=trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    torch.manual_seed(0)
    base_dir = zoo / "plain-llama"
    _save(base_dir, transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
        num_key_value_heads=2, initializer_range=0.3, tie_word_embeddings=True)), tok)
    output = tmp_path / "out"
    run, _, _ = run_training(zoo, output, "sft", "plain-llama", "lora", steps=3, monkeypatch=monkeypatch)
    assert len(run.tokenizer) == len(tok) + 2

    inputs = probe("sft", run.tokenizer)
    expected = logits(run.model, inputs)
    assert torch.equal(logits(load_specialist(output)[0], inputs), expected)
    base = transformers.AutoModelForCausalLM.from_pretrained(base_dir)
    base.resize_token_embeddings(len(transformers.AutoTokenizer.from_pretrained(output)))
    assert torch.equal(logits(peft.PeftModel.from_pretrained(base, output), inputs), expected)


def test_specialist_folder_holds_tokenizer_template_and_a_manifest_of_the_run(zoo, tmp_path, monkeypatch):
    from tailorlm.data.templates import CHATML_TEMPLATE
    from tailorlm.strategies.base import library_versions

    output = tmp_path / "out"
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text((zoo / "chat.jsonl").read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    run, records, result = run_training(zoo, output, "sft", "llama", "lora", steps=4, monkeypatch=monkeypatch,
                                        extra=(f"data.eval={eval_file}", "train.eval_every=2"))

    assert {"adapter_config.json", "adapter_model.safetensors", "specialist.json", "tokenizer.json",
            "tokenizer_config.json", "metrics.jsonl"} <= {p.name for p in output.iterdir()}
    tokenizer = transformers.AutoTokenizer.from_pretrained(output)
    assert tokenizer.chat_template == CHATML_TEMPLATE  # the tiny tokenizer had none; training installed ChatML
    assert tokenizer.get_vocab() == run.tokenizer.get_vocab()

    manifest = read_manifest(output)
    assert manifest.base_model == str(zoo / "llama") and manifest.weights == "adapter"
    assert (manifest.strategy, manifest.objective, manifest.steps) == ("lora", "sft", 4)
    assert manifest.config == run.config.to_dict()
    assert manifest.config["train"]["lr"] == LR["lora"] and manifest.config["lora"]["r"] == 16
    sha = {split: {Path(f).name: digest for f, digest in files.items()} for split, files in manifest.data.items()}
    assert sha == {"train": {"chat.jsonl": hashlib.sha256((zoo / "chat.jsonl").read_bytes()).hexdigest()},
                   "eval": {"eval.jsonl": hashlib.sha256(eval_file.read_bytes()).hexdigest()}}
    assert manifest.versions == library_versions()
    assert manifest.versions["peft"] == peft.__version__ and manifest.versions["torch"] == torch.__version__

    evals = [r for r in read_metrics(output) if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2, 4]
    best = min(evals, key=lambda r: r["eval_loss"])
    assert manifest.metrics["final_loss"] == records[-1]["loss"] == result.final_loss
    assert manifest.metrics["best_step"] == best["step"] and manifest.metrics["best"]["eval_loss"] == best["eval_loss"]
    assert manifest.metrics["steps"] == 4


def test_early_stopping_keeps_the_best_checkpoint_not_the_last(zoo, tmp_path, monkeypatch):
    """The eval loss falls for three evaluations, then rises: patience 2 stops the run after step 5 and the specialist
    holds step 3's weights. The eval forward passes run for real; their losses are scripted, since where a real run
    bounces depends on rounding (a learning rate of 1.0 did it, until the order of a few sums changed)."""
    from tailorlm.training import loop

    output = tmp_path / "out"
    scripted = iter([5.0, 4.0, 3.0, 3.5, 3.25, 3.1, 3.05])
    evaluate = loop._evaluate

    def scripted_evaluate(loss_module, *args):
        value = next(scripted)

        def loss(batch):
            _, tokens = loss_module(batch)
            return torch.tensor(value) * tokens, tokens

        return evaluate(loss, *args)

    monkeypatch.setattr(loop, "_evaluate", scripted_evaluate)
    _, records, result = run_training(
        zoo, output, "sft", "llama", "lora", monkeypatch=monkeypatch,
        extra=(f"data.eval={zoo / 'chat.jsonl'}", "train.eval_every=1", "train.early_stopping_patience=2"))

    evals = [r for r in read_metrics(output) if "eval_loss" in r]
    assert [r["step"] for r in evals] == list(range(1, result.steps + 1))
    losses = [r["eval_loss"] for r in evals]
    assert losses == pytest.approx([5.0, 4.0, 3.0, 3.5, 3.25])
    assert result.stopped_early and result.steps == 5 and len(records) == result.steps
    assert result.best_step == 3  # two evaluations without improvement, then stop
    assert read_manifest(output).metrics["best"]["eval_loss"] == min(losses)

    specialist, _, _ = load_specialist(output)
    weights = dict(specialist.named_parameters())
    best = load_file(str(checkpoint_dir(output, 3) / "trainable.safetensors"))
    last = load_file(str(list_checkpoints(output)[-1] / "trainable.safetensors"))
    assert list_checkpoints(output)[-1] == checkpoint_dir(output, result.steps)
    assert best.keys() == last.keys() and all("lora_" in name or "modules_to_save" in name for name in best)
    assert all(torch.equal(weights[name], value) for name, value in best.items())
    assert not all(torch.equal(weights[name], value) for name, value in last.items())


def test_a_decoder_classifier_gives_a_text_the_same_logits_whatever_it_is_batched_with(zoo, tmp_path, monkeypatch):
    """Prompt tuning feeds embeddings, so the model cannot find the pad tokens; tailorlm reads the last real token."""
    run, _, _ = run_training(zoo, tmp_path / "out", "classify", "llama", "prompt_tuning", steps=5,
                             monkeypatch=monkeypatch)
    tok, model = run.tokenizer, run.model.eval()
    short, long = tok("the lazy dog").input_ids, tok("the court held that the statement was hearsay").input_ids
    batch = collate_padded([{"input_ids": short}, {"input_ids": long}], tok.pad_token_id)
    with torch.no_grad():
        together = classifier_logits(model, batch)  # (2, C)
        alone = [model(input_ids=torch.tensor([ids])).logits[0] for ids in (short, long)]
    torch.testing.assert_close(together, torch.stack(alone), rtol=0, atol=1e-5)


def test_prefix_tuning_cannot_classify_and_the_error_says_what_can():
    values = {"model": "m", "data": "d.jsonl", "output": "o", "objective": "classify", "method": "prefix_tuning"}
    with pytest.raises(ConfigError) as err:
        resolve_config(values=values)
    assert "for classify: full, freeze, lora, dora, ia3, prompt_tuning, p_tuning" in str(err.value)


def test_a_classifier_checkpoint_with_another_label_count_gets_a_new_head(tmp_path):
    tok = bert_tokenizer()
    two = transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        num_labels=2))
    _save(tmp_path / "sentiment", two, tok)
    model, _ = load_model(tmp_path / "sentiment", head="sequence-classification", num_labels=3, device="cpu")
    assert model.classifier.out_features == 3
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, two.bert.embeddings.word_embeddings.weight)


def test_p_tuning_with_an_lstm_prompt_encoder_learns_and_reloads_in_plain_peft(zoo, tmp_path, monkeypatch):
    """peft saves the encoder's output, not the LSTM; torch's LSTM kernels with and without autograd differ in the
    last bits, so the live model matches the saved prompt to float precision, and the two loaders match bitwise."""
    output = tmp_path / "out"
    run, records, _ = run_training(zoo, output, "sft", "llama", "p_tuning", monkeypatch=monkeypatch,
                                   extra=("prompt.encoder=lstm",))
    assert json.loads((output / "adapter_config.json").read_text())["encoder_reparameterization_type"] == "LSTM"
    assert records[-1]["loss"] < 0.7 * records[0]["loss"]
    inputs = probe("sft", run.tokenizer)
    plain = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(zoo / "llama"), output)
    expected = logits(plain, inputs)
    assert torch.equal(logits(load_specialist(output)[0], inputs), expected)
    torch.testing.assert_close(logits(run.model, inputs), expected, rtol=0, atol=1e-5)
