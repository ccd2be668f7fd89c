#!/usr/bin/env python3
"""Writes a tiny Llama model that vLLM can serve, with no network: random weights (seeded)
and a byte-level BPE tokenizer trained here on generated text, with a chat template.

usage: make_tiny_model.py OUT_DIR
"""
import json
import os
import random
import sys

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
random.seed(7)
torch.manual_seed(7)

vocabulary = ("llama model engine token stream reply server daemon socket request "
              "answer question why how sky blue light small fast slow one two three "
              "hello world the a of to and is in it for on with").split()
corpus = [" ".join(random.choice(vocabulary) for _ in range(random.randint(3, 16)))
          for _ in range(2000)]

special = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tokenizer.decoder = decoders.ByteLevel()
tokenizer.train_from_iterator(
    corpus,
    trainers.BpeTrainer(vocab_size=1024, special_tokens=special,
                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
)
fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>",
                               bos_token="<s>", eos_token="</s>", pad_token="</s>")
fast.chat_template = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
fast.save_pretrained(out)

config = LlamaConfig(
    # head_dim = 128 / 2 = 64: vLLM's CPU attention kernels take 32..256 in steps of 16.
    vocab_size=len(fast), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
    num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
    bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
    pad_token_id=fast.pad_token_id, tie_word_embeddings=True, torch_dtype="float32",
)
LlamaForCausalLM(config).to(torch.float32).save_pretrained(out, safe_serialization=True)
with open(os.path.join(out, "generation_config.json"), "w") as f:
    json.dump({"bos_token_id": config.bos_token_id, "eos_token_id": config.eos_token_id}, f)
print("tiny model written to", out)
