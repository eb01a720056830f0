"""Reference logits of tiny random causal LMs, for the Rust LM parity tests.

Dev-only: needs torch, transformers and safetensors (the /work/venv-ref environment:
torch 2.12 CPU, transformers 5.17). Writes, for each model, a folder under
crates/flamingo-core/tests/fixtures/<name>/ holding

  config.json        the LM config in the form the released checkpoints ship it
  model.safetensors  the weights under their HF names
  expected.safetensors
      input_ids, attention_mask (2, T) i64      two unpadded rows
      logits (2, T, V) f32                      the reference forward
      padded_input_ids, padded_attention_mask, padded_position_ids (2, T) i64
      padded_logits (2, T, V) f32               row 0 left-padded by 3; the positions are
                                                cumsum(mask) - 1 (what `generate` passes)

Models:
  gptj               GPTJForCausalLM, partial interleaved rotary (rotary_dim 8 of head 16)
  gpt_neox_rpj       GPTNeoXForCausalLM as RedPajama-INCITE-3B (OpenFlamingo-4B): full
                     rotary (rotary_pct 1.0), sequential residual, untied embed_out,
                     transformers-4 config.json
  gpt_neox_pythia    GPTNeoXForCausalLM as Pythia: rotary_pct 0.25, parallel residual,
                     transformers-4 config.json

MosaicGPT (model_type "mosaic_gpt", OpenFlamingo-3B's LM) is remote code
(mosaicml/mpt-1b-redpajama-200b, trust_remote_code) that is not installed here and cannot
be downloaded in this environment, so no reference logits are produced for it.

usage: python3 scripts/dev/make_lm_fixtures.py [OUT_DIR]
       (default OUT_DIR: crates/flamingo-core/tests/fixtures)
"""
import json
import os
import sys

import torch
import transformers
from safetensors.torch import save_file
from transformers import GPTJConfig, GPTJForCausalLM, GPTNeoXConfig, GPTNeoXForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "..", "..", "crates", "flamingo-core", "tests", "fixtures")

VOCAB = 96
PAD = 95
SEED = 4242


def perturb_(model, scale):
    """Move every parameter (LayerNorm weights and biases included) off its init, so that
    a port that skips a bias or a norm weight cannot pass."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn_like(p))


def inputs():
    g = torch.Generator().manual_seed(SEED + 1)
    ids = torch.randint(0, VOCAB - 1, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    padded = ids.clone()
    padded[0, 3:] = ids[0, :9]
    padded[0, :3] = PAD
    padded_mask = torch.ones_like(ids)
    padded_mask[0, :3] = 0
    # HF generate's positions for left padding: cumsum(mask) - 1, pads set to 1.
    pos = padded_mask.cumsum(-1) - 1
    pos = pos.masked_fill(padded_mask == 0, 1)
    return ids, mask, padded, padded_mask, pos


def reference(model, name, out, config_rewrite=None, rename=None):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    model = model.eval()
    ids, mask, padded, padded_mask, pos = inputs()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
        padded_logits = model(input_ids=padded, attention_mask=padded_mask,
                              position_ids=pos).logits
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    for old, new in (rename or {}).items():
        state[new] = state.pop(old)
    save_file(state, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    cfg = model.config.to_dict()
    if config_rewrite:
        cfg = config_rewrite(cfg)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    # The rewritten config.json must describe the same model: reload the folder and compare.
    reloaded = type(model).from_pretrained(d).eval()
    with torch.no_grad():
        again = reloaded(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(again, logits), f"{name}: config.json does not reproduce the model"
    save_file({
        "input_ids": ids, "attention_mask": mask, "logits": logits.float().contiguous(),
        "padded_input_ids": padded, "padded_attention_mask": padded_mask,
        "padded_position_ids": pos, "padded_logits": padded_logits.float().contiguous(),
    }, os.path.join(d, "expected.safetensors"),
        metadata={"source": f"scripts/dev/make_lm_fixtures.py seed {SEED}",
                  "torch": torch.__version__, "transformers": transformers.__version__})
    print(name, "ok", tuple(logits.shape), sorted(state)[:3], "...")


def neox_v4(rotary_pct, parallel):
    """A GPT-NeoX config.json as the released repos ship it (transformers 4.2x)."""
    def rewrite(cfg):
        keep = ["architectures", "bos_token_id", "eos_token_id", "hidden_act", "hidden_size",
                "initializer_range", "intermediate_size", "layer_norm_eps",
                "max_position_embeddings", "model_type", "num_attention_heads",
                "num_hidden_layers", "tie_word_embeddings", "use_cache", "vocab_size"]
        v4 = {k: cfg[k] for k in keep if k in cfg}
        v4.update(architectures=["GPTNeoXForCausalLM"], rotary_pct=rotary_pct, rotary_emb_base=10000, use_parallel_residual=parallel,
                  torch_dtype="float32", transformers_version="4.28.1")
        return v4
    return rewrite


def gptj_v4(cfg):
    """GPT-J's config.json as EleutherAI/gpt-j-6B ships it (GPT-2 style names)."""
    keep = ["activation_function", "architectures", "bos_token_id", "eos_token_id",
            "initializer_range", "layer_norm_epsilon", "model_type", "n_embd", "n_head",
            "n_inner", "n_layer", "n_positions", "rotary_dim", "tie_word_embeddings",
            "use_cache", "vocab_size"]
    v4 = {k: cfg[k] for k in keep if k in cfg}
    v4.update(architectures=["GPTJForCausalLM"], attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0, rotary=True,
              torch_dtype="float32", transformers_version="4.18.0.dev0")
    return v4


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_OUT
    torch.set_num_threads(2)

    torch.manual_seed(SEED)
    gptj = GPTJForCausalLM(GPTJConfig(
        vocab_size=VOCAB, n_positions=64, n_embd=64, n_layer=2, n_head=4, rotary_dim=8,
        n_inner=None, activation_function="gelu_new", bos_token_id=1, eos_token_id=2,
        pad_token_id=PAD, tie_word_embeddings=False))
    perturb_(gptj, 0.05)
    reference(gptj, "gptj", out, config_rewrite=gptj_v4)

    torch.manual_seed(SEED + 10)
    rpj = GPTNeoXForCausalLM(GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=256, rotary_pct=1.0, rotary_emb_base=10000,
        max_position_embeddings=64, use_parallel_residual=False, tie_word_embeddings=False,
        bos_token_id=0, eos_token_id=0))
    perturb_(rpj, 0.05)
    # transformers 5 calls the head `lm_head`; the released files call it `embed_out`.
    reference(rpj, "gpt_neox_rpj", out, config_rewrite=neox_v4(1.0, False),
              rename={"lm_head.weight": "embed_out.weight"})

    torch.manual_seed(SEED + 20)
    pythia = GPTNeoXForCausalLM(GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=256, rotary_pct=0.25, rotary_emb_base=10000,
        max_position_embeddings=64, use_parallel_residual=True, tie_word_embeddings=False,
        bos_token_id=0, eos_token_id=0))
    perturb_(pythia, 0.05)
    reference(pythia, "gpt_neox_pythia", out, config_rewrite=neox_v4(0.25, True),
              rename={"lm_head.weight": "embed_out.weight"})


if __name__ == "__main__":
    main()
