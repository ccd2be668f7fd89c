#!/usr/bin/env python3
"""Writes a tiny Llama model that vLLM can serve, with no network: random weights (seeded)
and a byte-level BPE tokenizer trained here on generated text, with a chat template.

With --family, the chat template (and the added tokens vLLM's parsers look up) are those of
a real family, abridged, so that vllamad's profile table picks that family's parsers:
  llama3  Llama 3.1-style: header tokens, tools in the system turn, `<|python_tag|>` calls
  hermes  Qwen 2.5 / Hermes-style: ChatML, `<tools>` and `<tool_call>` JSON calls
  qwen3   Qwen 3-style: as hermes, plus `<think>` and the `enable_thinking` switch
  llava   a vision model: LLaVA (a 2-layer CLIP vision tower on 32x32 images, 16x16
          patches, and the tiny Llama), with its image processor and `<image>` token

usage: make_tiny_model.py OUT_DIR [--family llama3|hermes|qwen3|llava]
"""
import json
import os
import random
import sys

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

out = sys.argv[1]
family = sys.argv[sys.argv.index("--family") + 1] if "--family" in sys.argv else None
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
CHATML_TOOLS = (
    "{%- if tools %}<|im_start|>system\n# Tools\n<tools>\n"
    "{%- for tool in tools %}{{ tool | tojson }}\n{%- endfor %}</tools>\n"
    "For each call return <tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n"
    "{%- endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ m.role }}\n{{ m.content or '' }}"
    "{%- for tc in m.tool_calls or [] %}\n<tool_call>\n{\"name\": \"{{ tc.function.name }}\", \"arguments\": {{ tc.function.arguments | tojson }}}\n</tool_call>{%- endfor %}"
    "<|im_end|>\n{%- endif %}"
    "{%- endfor %}"
)
if family == "llama3":
    fast.add_special_tokens({"additional_special_tokens": [
        "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|eom_id|>", "<|python_tag|>"]})
    fast.chat_template = (
        "<|begin_of_text|>"
        "{%- if tools %}<|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n"
        "Respond with a JSON function call {\"name\": function name, \"parameters\": arguments}.\n"
        "{%- for t in tools %}{{ t | tojson }}\n{%- endfor %}<|eot_id|>{%- endif %}"
        "{%- for m in messages %}<|start_header_id|>{{ 'ipython' if m.role == 'tool' else m.role }}<|end_header_id|>\n\n"
        "{%- if m.tool_calls %}<|python_tag|>{%- for tc in m.tool_calls %}{\"name\": \"{{ tc.function.name }}\", \"parameters\": {{ tc.function.arguments | tojson }}}{%- endfor %}<|eom_id|>"
        "{%- else %}{{ m.content }}<|eot_id|>{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{%- endif %}"
    )
elif family in ("hermes", "qwen3"):
    from tokenizers import AddedToken
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    # Not special: the parsers read them in the text (as Qwen's own tokenizers have them).
    extra = ["<tool_call>", "</tool_call>", "<tools>", "</tools>", "<tool_response>", "</tool_response>"]
    if family == "qwen3":
        extra += ["<think>", "</think>"]
    fast.add_tokens([AddedToken(t, special=False, normalized=False) for t in extra])
    fast.chat_template = CHATML_TOOLS + (
        "{%- if add_generation_prompt %}<|im_start|>assistant\n"
        + ("{%- if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{%- endif %}"
           if family == "qwen3" else "")
        + "{%- endif %}"
    )
elif family == "llava":
    from safetensors.torch import load_file, save_file
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)
    fast.add_special_tokens({"additional_special_tokens": ["<image>"]})
    fast.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>"
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
        "{% if c['type'] in ('image', 'image_url') %}<image>{% else %}{{ c['text'] }}{% endif %}"
        "{% endfor %}{% endif %}</s>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    LlavaProcessor(image_processor=images, tokenizer=fast, patch_size=16,
                   vision_feature_select_strategy="default",
                   chat_template=fast.chat_template).save_pretrained(out)
    text = LlamaConfig(
        vocab_size=len(fast), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id)
    vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=2, image_size=32, patch_size=16, projection_dim=64)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_index=fast.convert_tokens_to_ids("<image>"),
                         vision_feature_select_strategy="default", vision_feature_layer=-1,
                         torch_dtype="float32")
    LlavaForConditionalGeneration(config).to(torch.float32).save_pretrained(out, safe_serialization=True)
    # vLLM 0.32 loads the llava-hf layout: the vision tower's weights under `vision_model.`
    # (transformers 5 writes them without it).
    path = os.path.join(out, "model.safetensors")
    weights = {("vision_tower.vision_model." + k[len("vision_tower."):]
                if k.startswith("vision_tower.") else k): v for k, v in load_file(path).items()}
    save_file(weights, path, metadata={"format": "pt"})
    print("tiny llava model written to", out)
    sys.exit(0)
elif family is not None:
    sys.exit(f"unknown family {family}")
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
