"""transformers as the oracle for the host's pretrained models (tests/e2e/pretrained.rs).

    hf_oracle.py make WORK    tiny random models, one per architecture and head, with a
                              tokenizer trained offline, text data, and transformers'
                              Trainer run on each (the reference): WORK/CASE/{model,reference};
                              and a base Llama without a head (WORK/llama-base/model)
    hf_oracle.py check WORK   compares what the host wrote for each case (WORK/CASE/host)
                              with transformers: losses, trained weights, the saved folder
                              loading with no missing or unexpected keys, its logits on the
                              evaluation batch, greedy generations; exits 1 on a mismatch
    hf_oracle.py token_files DIR TEXT OUT
                              token-id files as Trainer and TRL users make them from TEXT
                              (JSONL) with DIR's tokenizer: OUT/labeled.safetensors (labels
                              aligned with input_ids, partly masked), OUT/ids.safetensors
    hf_oracle.py layers DIR TEXT OUT [DIR TEXT OUT ...]
                              per-layer golden outputs of DIR on TEXT (JSONL): the blocks'
                              input, each block's output and the logits, in OUT (safetensors);
                              several models in one process
    hf_oracle.py eval_loss DIR DATA DTYPE
                              transformers' loss of DIR (loaded in DTYPE) on token file DATA
    hf_oracle.py loads DIR HEAD [EVAL PREDICTIONS]
                              DIR loads in transformers (HEAD: causal or classifier) with no
                              missing or unexpected keys; with EVAL (JSONL) and PREDICTIONS
                              (host predict's safetensors), its logits are the host's

Nothing is downloaded. Needs the versions scripts/setup-torch.sh pins.
"""

import json
import os
import random
import sys

import torch
from safetensors import safe_open
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
)
from transformers import (BertConfig, Gemma2Config, Gemma3TextConfig, GemmaConfig, GPT2Config, LlamaConfig, MistralConfig, OPTConfig,
                          Phi3Config,
                          Qwen2Config, Qwen3Config, RobertaConfig)

TOLERANCE = 1e-4
MAX_LENGTH = 32
STEPS = 5
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 0.1
NUM_LABELS = 3
VOCAB = 320
SPECIAL = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
WORDS = (
    "the a cat dog sat ran on in mat park one two three plus is big small red blue green "
    "house tree bird sang walked over under quick slow day night"
).split()

# Every architecture the host ports, with the heads it has, small: 2 layers, width 64.
# Dropout off so that both sides compute the same steps.
DECODER = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               max_position_embeddings=128, vocab_size=VOCAB, bos_token_id=0, eos_token_id=2)
ENCODER = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               vocab_size=VOCAB, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=1)
def OPT(**extra):
    return OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                     vocab_size=VOCAB, dropout=0.0, bos_token_id=0, eos_token_id=2, **extra)


# Cases trained with HF's LabelSmoother (label_smoothing_factor): a causal LM (the host's
# chunked loss) and a classifier (the full logits).
SMOOTHING = {"llama-causal": 0.1, "bert-classifier": 0.1}

CASES = {
    # Llama 3.x: grouped-query attention, an explicit head_dim, llama3 RoPE scaling, no pad token.
    "llama-causal": ("causal", lambda: LlamaConfig(
        **DECODER, num_key_value_heads=2, head_dim=32, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 16}, tie_word_embeddings=False)),
    "llama-classifier": ("classifier", lambda: LlamaConfig(
        **DECODER, num_key_value_heads=2, tie_word_embeddings=True, pad_token_id=2)),
    "mistral-causal": ("causal", lambda: MistralConfig(**DECODER, num_key_value_heads=2, sliding_window=4096)),
    # A sliding window shorter than the texts: every layer sees 4 positions back at most.
    "mistral-window-causal": ("causal", lambda: MistralConfig(**DECODER, num_key_value_heads=2, sliding_window=4)),
    # Qwen2: q/k/v biases, tied embeddings, a pad token of its own.
    "qwen2-causal": ("causal", lambda: Qwen2Config(**DECODER, num_key_value_heads=2, tie_word_embeddings=True,
                                                   pad_token_id=1)),
    "qwen2-classifier": ("classifier", lambda: Qwen2Config(**DECODER, num_key_value_heads=1, pad_token_id=1)),
    # Per-layer attention: layer 0 full, layer 1 a window of 3 (max_window_layers 1).
    "qwen2-window-causal": ("causal", lambda: Qwen2Config(**DECODER, num_key_value_heads=2, pad_token_id=1,
                                                          use_sliding_window=True, sliding_window=3,
                                                          max_window_layers=1)),
    # Qwen3: q/k RMSNorm over head_dim; a sliding window from layer 1 on.
    "qwen3-causal": ("causal", lambda: Qwen3Config(**DECODER, num_key_value_heads=2, head_dim=16, pad_token_id=1,
                                                   use_sliding_window=True, sliding_window=3, max_window_layers=1)),
    "qwen3-classifier": ("classifier", lambda: Qwen3Config(**DECODER, num_key_value_heads=2, head_dim=16,
                                                           pad_token_id=1)),
    # Gemma: (1 + w) RMSNorm, embeddings scaled by sqrt(hidden), GeGLU, tied head.
    "gemma-causal": ("causal", lambda: GemmaConfig(**DECODER,
                                                   num_key_value_heads=1, head_dim=16, pad_token_id=1)),
    # Gemma 2: sandwich norms, soft caps small enough to act on a random model, the
    # attention scale from query_pre_attn_scalar, layer 0 sliding (window 4), layer 1 full.
    "gemma2-causal": ("causal", lambda: Gemma2Config(**DECODER, num_key_value_heads=2, head_dim=16, pad_token_id=1,
                                                     query_pre_attn_scalar=24, sliding_window=4,
                                                     attn_logit_softcapping=0.5, final_logit_softcapping=0.3)),
    # Gemma 3: q/k norms, layer 0 sliding (window 4) with its own RoPE base, layer 1 global.
    "gemma3-causal": ("causal", lambda: Gemma3TextConfig(
        **DECODER, num_key_value_heads=2, head_dim=16, pad_token_id=1, query_pre_attn_scalar=24, sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                         "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}})),
    "gemma3-classifier": ("classifier", lambda: Gemma3TextConfig(**DECODER, num_key_value_heads=2, head_dim=16,
                                                                 pad_token_id=1)),
    # Phi-3: fused qkv_proj and gate_up_proj, RoPE on half of each head, a window of 5.
    "phi3-causal": ("causal", lambda: Phi3Config(**DECODER, num_key_value_heads=2, pad_token_id=1, sliding_window=5,
                                                 rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                                  "partial_rotary_factor": 0.5})),
    # Phi-3 with LongRoPE: the texts pass original_max_position_embeddings (8), so the long
    # factors and the attention factor act (max_position_embeddings 128 / 8).
    "phi3-longrope-causal": ("causal", lambda: Phi3Config(
        **DECODER, num_key_value_heads=2, pad_token_id=1, original_max_position_embeddings=8,
        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.5,
                         "short_factor": [1.0, 1.1, 1.3, 1.7], "long_factor": [1.5, 2.5, 4.0, 6.0]})),
    "phi3-classifier": ("classifier", lambda: Phi3Config(**DECODER, pad_token_id=1)),
    # GPT-2: Conv1D weights, tied head, LayerNorms named ln_* (no weight decay by type).
    "gpt2-causal": ("causal", lambda: GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64, vocab_size=VOCAB,
                                                 resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                                 bos_token_id=0, eos_token_id=2)),
    # GPT-2 with its own lm_head (tie_word_embeddings false): the head is lm_head.weight.
    "gpt2-untied-causal": ("causal", lambda: GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                                        vocab_size=VOCAB, resid_pdrop=0.0, embd_pdrop=0.0,
                                                        attn_pdrop=0.0, bos_token_id=0, eos_token_id=2,
                                                        tie_word_embeddings=False)),
    "gpt2-classifier": ("classifier", lambda: GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                                         vocab_size=VOCAB, resid_pdrop=0.0, embd_pdrop=0.0,
                                                         attn_pdrop=0.0, pad_token_id=1)),
    # OPT (125m's shape): pre-norm, biases, ReLU, learned positions offset by 2, tied head.
    "opt-causal": ("causal", lambda: OPT(pad_token_id=1)),
    # OPT 350m's shape: post-norm layers, no final norm, embeddings narrower than the
    # layers (project_in, project_out).
    "opt-postnorm-causal": ("causal", lambda: OPT(pad_token_id=1, do_layer_norm_before=False, word_embed_proj_dim=32)),
    "opt-classifier": ("classifier", lambda: OPT(pad_token_id=1)),
    "bert-classifier": ("classifier", lambda: BertConfig(**ENCODER, max_position_embeddings=64)),
    # RoBERTa: positions count from the pad index + 1.
    "roberta-classifier": ("classifier", lambda: RobertaConfig(**ENCODER, max_position_embeddings=66,
                                                               type_vocab_size=1)),
}


def sentences(rng, count):
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 10))) for _ in range(count)]


def write_data(work):
    rng = random.Random(7)
    for split, count in [("train", 12), ("eval", 6)]:
        with open(f"{work}/text_{split}.jsonl", "w") as f:
            for text in sentences(rng, count):
                f.write(json.dumps({"text": text}) + "\n")
        with open(f"{work}/labeled_{split}.jsonl", "w") as f:
            for text in sentences(rng, count):
                f.write(json.dumps({"text": text, "label": len(text.split()) % NUM_LABELS}) + "\n")


def train_tokenizer(work):
    rng = random.Random(3)
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(sentences(rng, 400), trainer)
    return tokenizer


def tokenizer_for(base, model_type):
    """The tokenizer as each family's: BOS first (llama-like), none (GPT-2), <s> .. </s> (BERT, RoBERTa)."""
    tokenizer = Tokenizer.from_str(base.to_str())
    if model_type in ("bert", "roberta"):
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>", pair="<s> $A </s> $B </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    elif model_type != "gpt2":
        tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    # Llama and Mistral tokenizers have no pad token (the host then pads with </s>).
    pad = {} if model_type in ("llama", "mistral") else {"pad_token": "<pad>"}
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>", **pad)


def auto_class(head):
    return AutoModelForCausalLM if head == "causal" else AutoModelForSequenceClassification


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def batch(tokenizer, rows, head):
    """The rows as one batch, as the host pads them: to the longest, on the right."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    encoded = tokenizer([r["text"] for r in rows], truncation=True, max_length=MAX_LENGTH, padding="longest",
                        return_tensors="pt", return_token_type_ids=False)
    if head == "causal":
        labels = encoded["input_ids"].masked_fill(encoded["attention_mask"] == 0, -100)
    else:
        labels = torch.tensor([r["label"] for r in rows])
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": labels}


class Rows(torch.utils.data.Dataset):
    def __init__(self, tensors):
        self.tensors = tensors

    def __len__(self):
        return len(self.tensors["input_ids"])

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.tensors.items()}


class RecordingTrainer(Trainer):
    """Trainer that records each optimizer step's loss (full batch: one per step).

    The loss is the model's own mean over the tokens it predicts: with one batch per step
    that is what Trainer computes from num_items_in_batch, except that transformers 5.24
    counts GPT2LMHeadModel's label tokens before the shift (the class has no loss_type),
    dividing its loss by one token per sequence too many.
    """

    losses = []

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, None)
        self.losses.append((loss[0] if return_outputs else loss).item())
        return loss


def make(work):
    os.makedirs(work, exist_ok=True)
    write_data(work)
    base = train_tokenizer(work)
    for name, (head, config) in CASES.items():
        case = f"{work}/{name}"
        config = config()
        if head == "classifier":
            config.num_labels = NUM_LABELS
        torch.manual_seed(0)
        model = auto_class(head).from_config(config)
        model.save_pretrained(f"{case}/model")
        tokenizer = tokenizer_for(base, config.model_type)
        tokenizer.save_pretrained(f"{case}/model")
        # The reference: transformers' Trainer, full-batch steps, AdamW with weight decay
        # by HF's rules, clipping at 1.0, linear decay.
        data = "text" if head == "causal" else "labeled"
        rows = read_jsonl(f"{work}/{data}_train.jsonl")
        tokenizer = AutoTokenizer.from_pretrained(f"{case}/model")
        args = TrainingArguments(
            output_dir=f"{case}/reference/run", per_device_train_batch_size=len(rows), max_steps=STEPS,
            learning_rate=LEARNING_RATE, weight_decay=WEIGHT_DECAY, optim="adamw_torch", logging_steps=1,
            save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=42,
            label_smoothing_factor=SMOOTHING.get(name, 0.0))
        trainer = RecordingTrainer(model=model, args=args, train_dataset=Rows(batch(tokenizer, rows, head)))
        trainer.losses = []
        trainer.train()
        model.save_pretrained(f"{case}/reference/trained")
        with open(f"{case}/reference/losses.json", "w") as f:
            json.dump(trainer.losses, f)
        logged = [e for e in trainer.state.log_history if "loss" in e]
        with open(f"{case}/reference/state.json", "w") as f:
            json.dump({"total_flos": trainer.state.total_flos,
                       "learning_rates": [e["learning_rate"] for e in logged]}, f)
    # A base model without a head (LlamaModel), for the tests of a new head.
    torch.manual_seed(0)
    AutoModel.from_config(CASES["llama-classifier"][1]()).save_pretrained(f"{work}/llama-base/model")
    tokenizer_for(base, "llama").save_pretrained(f"{work}/llama-base/model")
    with open(f"{work}/cases.json", "w") as f:
        json.dump([{"name": n, "head": h, "data": "text" if h == "causal" else "labeled",
                    "smoothing": SMOOTHING.get(n, 0.0)}
                   for n, (h, _) in CASES.items()], f)


def tensors(path):
    with safe_open(path, "pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}, f.metadata()


def largest_difference(a, b):
    return (a.double() - b.double()).abs().max().item()


def check_case(work, name, head, failures):
    case = f"{work}/{name}"
    host = f"{case}/host/output"
    fail = lambda what: failures.append(f"{name}: {what}")
    measured = {}
    # Losses, step by step.
    with open(f"{case}/reference/losses.json") as f:
        expected = json.load(f)
    with open(f"{host}/trainer_state.json") as f:
        history = json.load(f)["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    if len(losses) == len(expected):
        measured["losses"] = max(abs(a - b) for a, b in zip(losses, expected))
    if len(losses) != len(expected) or measured["losses"] > TOLERANCE:
        fail(f"losses {losses} differ from transformers' {expected}")
    # The logged learning rates (the rate each step used, transformers >= 4.51) and the
    # floating-point operations (6 x tokens x parameters outside embeddings).
    with open(f"{case}/reference/state.json") as f:
        reference = json.load(f)
    with open(f"{host}/trainer_state.json") as f:
        state = json.load(f)
    rates = [entry["learning_rate"] for entry in history if "loss" in entry]
    if len(rates) != len(reference["learning_rates"]) or any(
            abs(a - b) > 1e-12 for a, b in zip(rates, reference["learning_rates"])):
        fail(f"logged learning rates {rates} differ from transformers' {reference['learning_rates']}")
    if state["total_flos"] != reference["total_flos"]:
        fail(f"total_flos {state['total_flos']} differs from transformers' {reference['total_flos']}")
    # The weights after the steps, and the same tensor names (tied weights written once).
    mine, metadata = tensors(f"{host}/model.safetensors")
    theirs, _ = tensors(f"{case}/reference/trained/model.safetensors")
    if metadata != {"format": "pt"}:
        fail(f"model.safetensors metadata {metadata}")
    if sorted(mine) != sorted(theirs):
        fail(f"tensor names {sorted(set(mine) ^ set(theirs))} differ from save_pretrained's")
    else:
        worst = max((largest_difference(mine[n], theirs[n]), n) for n in mine)
        measured["weights"] = worst[0]
        if worst[0] > TOLERANCE:
            fail(f"trained weights differ from transformers' by {worst[0]:.2e} ({worst[1]})")
    # The saved folder loads with nothing missing, and its logits are the host's.
    model, info = auto_class(head).from_pretrained(host, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k != "error_msgs"}
    if problems:
        fail(f"from_pretrained reports {problems}")
    with open(f"{host}/config.json") as f:
        config = json.load(f)
    if config["architectures"] != [type(model).__name__]:
        fail(f"config.json architectures {config['architectures']}, transformers made {type(model).__name__}")
    data = "text" if head == "causal" else "labeled"
    tokenizer = AutoTokenizer.from_pretrained(host)
    rows = read_jsonl(f"{work}/{data}_eval.jsonl")
    inputs = batch(tokenizer, rows, head)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    predicted, _ = tensors(f"{case}/host/predictions.safetensors")
    if predicted["predictions"].shape != logits.shape:
        fail(f"logits of shape {list(predicted['predictions'].shape)}, transformers' {list(logits.shape)}")
    elif (measured.__setitem__("logits", largest_difference(predicted["predictions"], logits))
          or measured["logits"] > TOLERANCE):
        fail(f"logits differ from transformers' by {largest_difference(predicted['predictions'], logits):.2e}")
    # Greedy generation from the saved folder.
    if head == "causal":
        with open(f"{case}/host/generated.json") as f:
            generated = json.load(f)
        prompt = torch.tensor([generated["prompt_ids"]])
        with torch.no_grad():
            out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        theirs = out[0, prompt.shape[1]:].tolist()
        if generated["generated_ids"] != theirs:
            fail(f"greedy tokens {generated['generated_ids']}, transformers generates {theirs}")
    verdict = "FAILED" if any(f.startswith(name + ":") for f in failures) else "ok"
    print(f"{name}: {verdict}; largest differences: " + ", ".join(f"{k} {v:.1e}" for k, v in measured.items()))


def check(work):
    failures = []
    with open(f"{work}/cases.json") as f:
        cases = json.load(f)
    for case in cases:
        try:
            check_case(work, case["name"], case["head"], failures)
        except Exception as error:  # a missing file or a load failure is a failure of the case
            failures.append(f"{case['name']}: {type(error).__name__}: {error}")
    for failure in failures:
        print(failure, file=sys.stderr)
    sys.exit(1 if failures else 0)


def loads(folder, head, eval_file=None, predictions=None):
    model, info = auto_class(head).from_pretrained(folder, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k != "error_msgs"}
    if problems:
        sys.exit(f"{folder}: from_pretrained reports {problems}")
    if eval_file:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        inputs = batch(tokenizer, read_jsonl(eval_file), head)
        model.eval()
        with torch.no_grad():
            logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        difference = largest_difference(tensors(predictions)[0]["predictions"], logits)
        if difference > TOLERANCE:
            sys.exit(f"{folder}: logits differ from the host's by {difference:.2e}")
    print(f"{folder}: {type(model).__name__} loads with nothing missing or unexpected")


def blocks_of(model):
    """The model's stack of transformer blocks, as each architecture names it."""
    base = getattr(model, model.base_model_prefix)
    for path in ("layers", "h", "encoder.layer", "decoder.layers"):
        module = base
        for part in path.split("."):
            module = getattr(module, part, None)
        if module is not None:
            return module
    raise SystemExit(f"{type(model).__name__}: no block list found")


def layers(*triples):
    """layer_outputs for each (folder, text_file, out) triple, in one process."""
    for i in range(0, len(triples), 3):
        layer_outputs(*triples[i:i + 3])


def layer_outputs(folder, text_file, out):
    """Per-layer golden outputs on the text file's rows (padded as the host pads them):
    the blocks' input (embeddings), each block's output, and the logits, with the
    input_ids and attention_mask used."""
    from safetensors.torch import save_file
    with open(f"{folder}/config.json") as f:
        architecture = json.load(f)["architectures"][0]
    head = "classifier" if architecture.endswith("ForSequenceClassification") else "causal"
    model = auto_class(head).from_pretrained(folder).eval()
    inputs = batch(AutoTokenizer.from_pretrained(folder), read_jsonl(text_file), head)
    captured = {}
    blocks = blocks_of(model)
    def blocks_input(module, args, kwargs):
        captured.setdefault("embeddings", (args[0] if args else kwargs["hidden_states"]).clone())

    blocks[0].register_forward_pre_hook(blocks_input, with_kwargs=True)
    for i, block in enumerate(blocks):
        block.register_forward_hook(lambda module, args, output, i=i: captured.__setitem__(
            f"layers.{i}", (output[0] if isinstance(output, tuple) else output).clone()))
    with torch.no_grad():
        captured["logits"] = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    captured["input_ids"], captured["attention_mask"] = inputs["input_ids"], inputs["attention_mask"]
    save_file({k: v.contiguous() for k, v in captured.items()}, out)


def token_files(folder, text_file, out_dir):
    """Token-id data as Trainer and TRL users build it, from the text file's rows:
    labeled.safetensors (labels aligned with input_ids, -100 on padding and on each row's
    first two tokens, a completion-only mask) and ids.safetensors (input_ids alone)."""
    from safetensors.torch import save_file
    tokenizer = AutoTokenizer.from_pretrained(folder)
    inputs = batch(tokenizer, read_jsonl(text_file), "causal")
    labels = inputs["labels"].clone()
    labels[:, :2] = -100
    save_file({"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"], "labels": labels},
              f"{out_dir}/labeled.safetensors")
    save_file({"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]},
              f"{out_dir}/ids.safetensors")


def eval_loss(folder, data, dtype):
    """transformers' loss on a token file, in one batch (Trainer's eval_loss for it), with the
    model in `dtype`; labels = input_ids on real tokens where the file has none."""
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=getattr(torch, dtype)).eval()
    inputs, _ = tensors(data)
    labels = inputs.get("labels", inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100))
    with torch.no_grad():
        loss = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=labels).loss
    print(json.dumps({"eval_loss": loss.item()}))


if __name__ == "__main__":
    command, arguments = sys.argv[1], sys.argv[2:]
    {"make": make, "check": check, "loads": loads, "token_files": token_files,
     "eval_loss": eval_loss, "layers": layers}[command](*arguments)
