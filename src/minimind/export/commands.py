"""The `minimind import` and `minimind export` verbs (argparse wiring only).

    minimind import minimind-pth FILE.pth --out DIR [--tokenizer DIR] [--preset NAME] [shape flags]
    minimind import minimind-lora FILE.pth --base DIR --out ADAPTER_DIR
    minimind import hf HF_DIR --out DIR
    minimind export hf --model DIR --out HF_DIR [--dtype fp32|fp16|bf16]
    minimind export gguf --model DIR --out FILE.gguf [--dtype f32|f16|bf16|q8_0]
    minimind export ollama --model DIR --out FOLDER [--name NAME] [--dtype q8_0]

The work happens in the modules next to this one; each command prints what it wrote.
"""

from __future__ import annotations

# Each verb imports its converter when it runs: they import torch, and the CLI's parsers
# import this module.


def cmd_import_pth(args) -> None:
    from .common import describe
    from .minimind_pth import import_minimind_pth

    out, config = import_minimind_pth(
        args.file,
        args.out,
        tokenizer=args.tokenizer,
        preset_name=args.preset,
        dtype=args.dtype,
        force=args.force,
        num_attention_heads=args.num_attention_heads,
        num_experts_per_tok=args.num_experts_per_tok,
        rms_norm_eps=args.rms_norm_eps,
        rope_theta=args.rope_theta,
        max_position_embeddings=args.max_position_embeddings,
    )
    print(f"wrote {out}: {describe(config)}")
    if args.tokenizer is None:
        print(
            f"note: no --tokenizer given; copy tokenizer.json and tokenizer_config.json into {out} "
            "before chatting (MiniMind's are in its model/ folder)"
        )


def cmd_import_v_pth(args) -> None:
    from .minimind_v_pth import import_minimind_v_pth

    out, model = import_minimind_v_pth(
        args.file,
        args.out,
        args.encoder,
        tokenizer=args.tokenizer,
        preset_name=args.preset,
        dtype=args.dtype,
        force=args.force,
    )
    v = model.vision_config
    print(f"wrote {out}: a vision-language model, {v.image_tokens} tokens per {v.image_size} px image, tower {v.path}")
    if args.tokenizer is None:
        print(f"note: no --tokenizer given; copy MiniMind's tokenizer.json and tokenizer_config.json into {out}")


def cmd_import_lora(args) -> None:
    from .minimind_lora import import_minimind_lora

    r = import_minimind_lora(args.file, args.base, args.out, force=args.force)
    print(
        f"wrote {r['out']}: LoRA rank {r['rank']} on {r['layers']} layers ({', '.join(r['targets'])}), "
        f"stored as {r['dtype']}, scale 1 (alpha = rank, as MiniMind)"
    )
    print(f"use it with: minimind chat --model {args.base} --lora {r['out']}")


def cmd_import_hf(args) -> None:
    from .common import describe
    from .hf_import import import_hf

    r = import_hf(args.dir, args.out, dtype=args.dtype, force=args.force)
    print(f"wrote {r['out']}: {r['architecture']} -> {describe(r['config'])}")
    if not {"tokenizer.json", "tokenizer_config.json"} <= set(r["tokenizer"]):
        print(f"note: {args.dir} has no tokenizer.json + tokenizer_config.json; add them to {r['out']} before chatting")


def cmd_export_hf(args) -> None:
    from .hf_export import export_hf

    r = export_hf(args.model, args.out, dtype=args.dtype, force=args.force)
    print(f"wrote {r['out']}: {r['architecture']}, {r['dtype']}")
    if not r["tokenizer"]:
        print(f"note: {args.model} has no tokenizer files; {r['out']} has none either")
    print(f"load it with: AutoModelForCausalLM.from_pretrained({r['out']!r})")
    print(f"serve it with: vllm serve {r['out']} --served-model-name minimind")


def cmd_export_gguf(args) -> None:
    from .gguf import export_gguf

    r = export_gguf(args.model, args.out, dtype=args.dtype, force=args.force, name=args.name)
    print(
        f"wrote {r['out']}: llama.cpp architecture {r['architecture']}, {r['dtype']}, {r['tensors']} tensors, "
        f"pre-tokenizer {r['pre_tokenizer']}"
    )
    print(f"run it with: llama-cli -m {r['out']} -cnv")


def cmd_export_ollama(args) -> None:
    from .ollama import export_ollama

    r = export_ollama(
        args.model,
        args.out,
        name=args.name,
        dtype=args.dtype,
        system=args.system,
        template_file=args.template,
        force=args.force,
    )
    print(f"wrote {r['out']} ({r['architecture']}, {r['dtype']}) and {r['modelfile']}")
    print(f"then run: {r['command']}")


def register(verbs) -> None:
    """Add the `import` and `export` verbs to the `minimind` parser's subparsers."""
    p = verbs.add_parser("import", help="convert original MiniMind .pth or transformers weights into a model directory")
    actions = p.add_subparsers(dest="import_verb", metavar="SOURCE", required=True)

    a = actions.add_parser("minimind-pth", help="a .pth saved by the original MiniMind (MiniMind2, minimind-3)")
    a.add_argument("file", help="the .pth file, e.g. out/full_sft_768.pth")
    a.add_argument("--out", required=True, help="the model directory to create")
    a.add_argument("--tokenizer", help="directory with tokenizer.json and tokenizer_config.json to copy in")
    a.add_argument("--preset", help="take what the tensors do not show from this preset, check the rest")
    a.add_argument("--dtype", default="auto", help="auto (as stored), fp32, fp16, bf16")
    g = a.add_argument_group("shape flags (only what the tensors cannot show)")
    g.add_argument("--num-attention-heads", type=int, help="query heads when there is no q/k norm (default 8)")
    g.add_argument("--num-experts-per-tok", type=int, help="MoE top-k (default: 2 for MiniMind2, 1 for minimind-3)")
    g.add_argument("--rms-norm-eps", type=float, help="RMSNorm eps (default 1e-5 for MiniMind2, 1e-6 for minimind-3)")
    g.add_argument("--rope-theta", type=float, help="RoPE base (default 1e6)")
    g.add_argument("--max-position-embeddings", type=int, help="longest context (default 32768)")
    a.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    a.set_defaults(func=cmd_import_pth)

    a = actions.add_parser("minimind-v-pth", help="a .pth saved by MiniMind-V (minimind-3v: LLM + projector)")
    a.add_argument("file", help="the .pth file, e.g. sft_vlm_768.pth")
    a.add_argument(
        "--encoder", required=True, help="the local SigLIP vision tower directory (e.g. siglip2-base-p32-256-ve)"
    )
    a.add_argument("--out", required=True, help="the model directory to create")
    a.add_argument("--tokenizer", help="directory with tokenizer.json and tokenizer_config.json to copy in")
    a.add_argument("--preset", help="take what the tensors do not show from this preset, check the rest")
    a.add_argument("--dtype", default="auto", help="auto (as stored), fp32, fp16, bf16")
    a.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    a.set_defaults(func=cmd_import_v_pth)

    a = actions.add_parser("minimind-lora", help="a LoRA adapter .pth saved by the original MiniMind (train_lora.py)")
    a.add_argument("file", help="the adapter .pth file, e.g. out/lora_identity_768.pth")
    a.add_argument(
        "--base", required=True, help="the model directory the adapter was trained on (e.g. imported full_sft)"
    )
    a.add_argument("--out", required=True, help="the adapter directory to create")
    a.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    a.set_defaults(func=cmd_import_lora)

    a = actions.add_parser("hf", help="a transformers Qwen3 / Qwen3-MoE / Llama directory (safetensors)")
    a.add_argument("dir", help="the transformers model directory")
    a.add_argument("--out", required=True, help="the model directory to create")
    a.add_argument("--dtype", default="auto", help="auto (as stored), fp32, fp16, bf16")
    a.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    a.set_defaults(func=cmd_import_hf)

    p = verbs.add_parser("export", help="write a model directory for transformers/vLLM, llama.cpp (GGUF) or Ollama")
    actions = p.add_subparsers(dest="export_verb", metavar="TARGET", required=True)

    a = actions.add_parser("hf", help="a transformers directory (Qwen3, Qwen3-MoE, Llama, Qwen2-MoE), vLLM-ready")
    a.add_argument("--model", required=True, help="the model directory")
    a.add_argument("--out", required=True, help="the directory to create")
    a.add_argument("--dtype", default="auto", help="auto (as stored), fp32, fp16, bf16")
    a.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    a.set_defaults(func=cmd_export_hf)

    a = actions.add_parser("gguf", help="one GGUF file for llama.cpp")
    a.add_argument("--model", required=True, help="the model directory")
    a.add_argument("--out", required=True, help="the .gguf file to write")
    a.add_argument("--dtype", default="f16", choices=["f32", "f16", "bf16", "q8_0"], help="weight type (default f16)")
    a.add_argument("--name", help="model name stored in the file (default: the directory name)")
    a.add_argument("--force", action="store_true", help="overwrite an existing --out")
    a.set_defaults(func=cmd_export_gguf)

    a = actions.add_parser("ollama", help="a GGUF file plus a Modelfile for `ollama create`")
    a.add_argument("--model", required=True, help="the model directory")
    a.add_argument("--out", required=True, help="the folder to create (model.gguf + Modelfile)")
    a.add_argument("--name", default="minimind", help="the Ollama model name (default minimind)")
    a.add_argument("--dtype", default="q8_0", choices=["f32", "f16", "bf16", "q8_0"], help="weight type (default q8_0)")
    a.add_argument("--system", help="a default system prompt (SYSTEM in the Modelfile)")
    a.add_argument("--template", help="use this Go template file instead of translating the chat template")
    a.add_argument("--force", action="store_true", help="overwrite a non-empty --out")
    a.set_defaults(func=cmd_export_ollama)
