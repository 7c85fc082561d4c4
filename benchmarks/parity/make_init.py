"""Shared initial weights: tiny GPT-2 saved once by pytorch-transformers 1.2.0 (run in venv-orig)."""
import os, shutil, sys
import torch
from pytorch_transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer
out = sys.argv[1]
bpe = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "l2kd", "resources", "gpt2-bpe")
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
cfg = GPT2Config(vocab_size_or_config_json_file=50257, n_positions=1024, n_ctx=1024, n_embd=128, n_layer=2, n_head=2)
model = GPT2LMHeadModel(cfg)
model.save_pretrained(out)
tok = GPT2Tokenizer(vocab_file=os.path.join(bpe, "encoder.json"), merges_file=os.path.join(bpe, "vocab.bpe"))
tok.save_pretrained(out)
print(sorted(os.listdir(out)), sum(p.numel() for p in model.parameters()))
