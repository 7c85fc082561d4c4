"""Shared initial weights, saved once by pytorch-transformers 1.2.0 (run in venv-orig).
usage: make_init.py OUT [tiny|small] [SEED]
tiny (default, seed 0): 2 layers, 2 heads, 128 dims; small (seed 42 unless given): GPT-2 124M,
12 layers, 12 heads, 768 dims. Both: 1024 positions and GPT-2's 50257-token vocabulary."""
import os, shutil, sys
import torch
from pytorch_transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer
out = sys.argv[1]
size = sys.argv[2] if len(sys.argv) > 2 else "tiny"
shape = {"tiny": dict(n_embd=128, n_layer=2, n_head=2), "small": dict(n_embd=768, n_layer=12, n_head=12)}[size]
seed = int(sys.argv[3]) if len(sys.argv) > 3 else (0 if size == "tiny" else 42)
bpe = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "l2kd", "resources", "gpt2-bpe")
os.makedirs(out, exist_ok=True)
torch.manual_seed(seed)
cfg = GPT2Config(vocab_size_or_config_json_file=50257, n_positions=1024, n_ctx=1024, **shape)
model = GPT2LMHeadModel(cfg)
model.save_pretrained(out)
tok = GPT2Tokenizer(vocab_file=os.path.join(bpe, "encoder.json"), merges_file=os.path.join(bpe, "vocab.bpe"))
tok.save_pretrained(out)
print(sorted(os.listdir(out)), sum(p.numel() for p in model.parameters()))
