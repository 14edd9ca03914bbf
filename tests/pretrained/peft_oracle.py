"""PEFT as the oracle for the host's LoRA adapters (tests/e2e/lora.rs).

    peft_oracle.py make WORK    per case (WORK/CASE): a tiny random base model made by
                                transformers (base/), an adapter made by PEFT on it with
                                random non-zero lora_B (init/), and the reference: PEFT +
                                transformers' Trainer, 5 full-batch AdamW steps from that
                                adapter (reference/: the trained adapter, losses.json)
    peft_oracle.py check WORK   compares what the host wrote (WORK/CASE/host/...) with PEFT:
                                the losses and the trained adapter, its files (names, shapes,
                                metadata, adapter_config.json), PeftModel.from_pretrained(base,
                                host adapter) logits against the host's predictions, the merged
                                folder against the adapter model, and the host's own fresh
                                adapter (targets as PEFT chooses them, PEFT's initialization);
                                exits 1 on a mismatch

Nothing is downloaded. Needs the versions scripts/setup-torch.sh pins (peft included).
"""

import json
import math
import os
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoTokenizer, TrainingArguments

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hf_oracle  # noqa: E402  (the tiny models, data, tokenizer and the recording Trainer)

TOLERANCE = 1e-4
STEPS = 5
# (base model case of hf_oracle, PEFT task type, target_modules, modules_to_save)
CASES = {
    # The classifier head is trained in full (modules_to_save), as PEFT does for SEQ_CLS.
    "llama-classifier": ("llama-classifier", "SEQ_CLS", "all-linear", None),
    "llama-causal": ("llama-causal", "CAUSAL_LM", ["q_proj", "v_proj"], None),
    "bert-classifier": ("bert-classifier", "SEQ_CLS", "all-linear", None),
    # PEFT lists RoBERTa's classifier.dense and classifier.out_proj in target_modules and
    # trains the classifier in full: those targets are matched, not missing.
    "roberta-classifier": ("roberta-classifier", "SEQ_CLS", "all-linear", None),
    # GPT-2's Conv1D: fan_in_fan_out.
    "gpt2-causal": ("gpt2-causal", "CAUSAL_LM", ["c_attn", "c_fc"], None),
    "qwen3-causal": ("qwen3-causal", "CAUSAL_LM", ["q_proj", "v_proj"], None),
    # Sandwich norms and soft caps around the adapted layers.
    "gemma2-causal": ("gemma2-causal", "CAUSAL_LM", "all-linear", None),
    # Phi-3's fused projections adapted as one layer each, as PEFT adapts them.
    "opt-causal": ("opt-causal", "CAUSAL_LM", ["q_proj", "v_proj"], None),
    "phi3-causal": ("phi3-causal", "CAUSAL_LM", ["qkv_proj", "gate_up_proj"], None),
}


def head_of(task_type):
    return "classifier" if task_type == "SEQ_CLS" else "causal"


def make(work):
    os.makedirs(work, exist_ok=True)
    hf_oracle.write_data(work)
    tokenizer_base = hf_oracle.train_tokenizer(work)
    specs = []
    for name, (model_case, task_type, targets, to_save) in CASES.items():
        case = f"{work}/{name}"
        head = head_of(task_type)
        config = hf_oracle.CASES[model_case][1]()
        if head == "classifier":
            config.num_labels = hf_oracle.NUM_LABELS
        torch.manual_seed(0)
        model = hf_oracle.auto_class(head).from_config(config)
        model.save_pretrained(f"{case}/base")
        hf_oracle.tokenizer_for(tokenizer_base, config.model_type).save_pretrained(f"{case}/base")
        # The adapter the host starts from: PEFT's, with lora_B random so that it acts.
        torch.manual_seed(1)
        lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=targets, task_type=task_type,
                          modules_to_save=to_save)
        peft = get_peft_model(model, lora)
        with torch.no_grad():
            for param_name, param in peft.named_parameters():
                if "lora_B" in param_name:
                    param.normal_(0.0, 0.05)
        peft.save_pretrained(f"{case}/init")
        fix_base_path(f"{case}/init", f"{case}/base")
        # The reference: 5 full-batch steps with transformers' Trainer on the PEFT model.
        data = "text" if head == "causal" else "labeled"
        rows = hf_oracle.read_jsonl(f"{work}/{data}_train.jsonl")
        tokenizer = AutoTokenizer.from_pretrained(f"{case}/base")
        args = TrainingArguments(
            output_dir=f"{case}/reference/run", per_device_train_batch_size=len(rows), max_steps=STEPS,
            learning_rate=hf_oracle.LEARNING_RATE, weight_decay=hf_oracle.WEIGHT_DECAY, optim="adamw_torch",
            logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=42)
        trainer = hf_oracle.RecordingTrainer(model=peft, args=args,
                                             train_dataset=hf_oracle.Rows(hf_oracle.batch(tokenizer, rows, head)))
        trainer.losses = []
        trainer.train()
        peft.save_pretrained(f"{case}/reference/trained")
        with open(f"{case}/reference/losses.json", "w") as f:
            json.dump(trainer.losses, f)
        specs.append({"name": name, "head": head, "data": data,
                      "targets": targets if isinstance(targets, str) else ",".join(targets)})
    with open(f"{work}/cases.json", "w") as f:
        json.dump(specs, f)


def fix_base_path(adapter, base):
    """PEFT records the base it was given; the host needs the folder's path."""
    path = f"{adapter}/adapter_config.json"
    with open(path) as f:
        config = json.load(f)
    config["base_model_name_or_path"] = os.path.abspath(base)
    with open(path, "w") as f:
        json.dump(config, f, indent=2)


def adapter_model(case, head, adapter):
    base = hf_oracle.auto_class(head).from_pretrained(f"{case}/base")
    return PeftModel.from_pretrained(base, adapter).eval()


def eval_logits(work, model, tokenizer_dir, head, data):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    inputs = hf_oracle.batch(tokenizer, hf_oracle.read_jsonl(f"{work}/{data}_eval.jsonl"), head)
    with torch.no_grad():
        return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits


def check_case(work, spec, fail, measured):
    name, head, data = spec["name"], spec["head"], spec["data"]
    case = f"{work}/{name}"
    host = f"{case}/host/output"
    # Losses step by step (the first is the PEFT adapter's forward pass in the host).
    with open(f"{case}/reference/losses.json") as f:
        expected = json.load(f)
    with open(f"{host}/trainer_state.json") as f:
        losses = [e["loss"] for e in json.load(f)["log_history"] if "loss" in e]
    if len(losses) != len(expected) or max(abs(a - b) for a, b in zip(losses, expected)) > TOLERANCE:
        fail(f"losses {losses} differ from PEFT's {expected}")
    else:
        measured["losses"] = max(abs(a - b) for a, b in zip(losses, expected))
    # The trained adapter: PEFT's tensor names, shapes, metadata and values.
    mine, metadata = hf_oracle.tensors(f"{host}/adapter_model.safetensors")
    theirs, _ = hf_oracle.tensors(f"{case}/reference/trained/adapter_model.safetensors")
    if metadata != {"format": "pt"}:
        fail(f"adapter_model.safetensors metadata {metadata}")
    if sorted(mine) != sorted(theirs):
        fail(f"adapter tensor names differ from PEFT's: {sorted(set(mine) ^ set(theirs))[:6]}")
    else:
        worst = max((hf_oracle.largest_difference(mine[n], theirs[n]), n) for n in mine)
        measured["adapter"] = worst[0]
        if worst[0] > TOLERANCE:
            fail(f"trained adapter differs from PEFT's by {worst[0]:.2e} ({worst[1]})")
    with open(f"{host}/adapter_config.json") as f:
        config = json.load(f)
    with open(f"{case}/init/adapter_config.json") as f:
        init = json.load(f)
    for key in ["peft_type", "r", "lora_alpha", "task_type", "fan_in_fan_out", "use_rslora"]:
        if config.get(key) != init.get(key):
            fail(f"adapter_config.json {key} {config.get(key)!r}, PEFT's {init.get(key)!r}")
    if sorted(config["target_modules"]) != sorted(init["target_modules"]):
        fail(f"target_modules {config['target_modules']}, PEFT's {init['target_modules']}")
    # PEFT loads the host's adapter and computes the host's logits.
    model = adapter_model(case, head, host)
    logits = eval_logits(work, model, f"{case}/base", head, data)
    predicted = hf_oracle.tensors(f"{case}/host/predictions.safetensors")[0]["predictions"]
    measured["logits"] = hf_oracle.largest_difference(predicted, logits)
    if measured["logits"] > TOLERANCE:
        fail(f"PeftModel with the host's adapter: logits differ from the host's by {measured['logits']:.2e}")
    # The merged folder: a plain transformers model equal to the adapter model.
    merged, info = hf_oracle.auto_class(head).from_pretrained(f"{host}/merged", output_loading_info=True)
    problems = {k: v for k, v in info.items() if v and k != "error_msgs"}
    if problems:
        fail(f"merged folder: from_pretrained reports {problems}")
    merged_logits = eval_logits(work, merged.eval(), f"{host}/merged", head, data)
    measured["merged"] = hf_oracle.largest_difference(merged_logits, logits)
    if measured["merged"] > TOLERANCE:
        fail(f"merged model's logits differ from the adapter model's by {measured['merged']:.2e}")
    check_fresh(case, spec, fail, init)


def check_fresh(case, spec, fail, init):
    """The host's own new adapter (learning rate 0): PEFT's targets, lora_B zero, lora_A
    Kaiming-uniform within +-1/sqrt(in) with a uniform's spread."""
    fresh, _ = hf_oracle.tensors(f"{case}/host/fresh/adapter_model.safetensors")
    peft_init, _ = hf_oracle.tensors(f"{case}/init/adapter_model.safetensors")
    shapes = lambda t: {n: list(v.shape) for n, v in t.items()}
    if shapes(fresh) != shapes(peft_init):
        fail(f"a new adapter's tensors differ from PEFT's: {sorted(set(fresh) ^ set(peft_init))[:6]}")
        return
    for tensor_name, value in fresh.items():
        if ".lora_B." in tensor_name and value.abs().max() != 0:
            fail(f"new {tensor_name} is not zero")
        if ".lora_A." in tensor_name:
            bound = 1 / math.sqrt(value.shape[1])
            spread = value.std().item() / (bound / math.sqrt(3))
            if value.abs().max() > bound or not 0.8 < spread < 1.2:
                fail(f"new {tensor_name} is not U(-{bound:.3f}, {bound:.3f}) (max {value.abs().max():.3f})")


def check(work):
    failures = []
    with open(f"{work}/cases.json") as f:
        cases = json.load(f)
    for spec in cases:
        name = spec["name"]
        measured = {}
        fail = lambda what, name=name: failures.append(f"{name}: {what}")
        try:
            check_case(work, spec, fail, measured)
        except Exception as error:  # a missing file or a load failure fails the case
            fail(f"{type(error).__name__}: {error}")
        verdict = "FAILED" if any(f.startswith(name + ":") for f in failures) else "ok"
        print(f"{name}: {verdict}; largest differences: " + ", ".join(f"{k} {v:.1e}" for k, v in measured.items()))
    for failure in failures:
        print(failure, file=sys.stderr)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    command, arguments = sys.argv[1], sys.argv[2:]
    {"make": make, "check": check}[command](*arguments)
