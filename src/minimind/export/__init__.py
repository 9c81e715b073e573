"""Use your model elsewhere: import original MiniMind / transformers weights, export to
transformers, GGUF (llama.cpp) and Ollama.

    from minimind.export import import_minimind_pth, import_hf, export_hf, export_gguf, export_ollama

Each function checks its input strictly and raises MiniMindError (one line naming the file and
the tensor or field) for anything it cannot convert exactly. GGUF and Ollama export need the
`gguf` package (pip install "minimind[export]"), imported only when they run.
"""

from importlib import import_module

# Imported on first use (PEP 562), so building the CLI's parsers does not import torch.
_WHERE = {
    "export_gguf": ".gguf",
    "export_hf": ".hf_export",
    "import_hf": ".hf_import",
    "import_minimind_pth": ".minimind_pth",
    "export_ollama": ".ollama",
}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(_WHERE[name], __name__), name)
    raise AttributeError(f"module 'minimind.export' has no attribute {name!r}")


__all__ = ["export_gguf", "export_hf", "export_ollama", "import_hf", "import_minimind_pth"]
