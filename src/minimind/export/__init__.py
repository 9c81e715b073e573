"""Use your model elsewhere: import original MiniMind / transformers weights, export to
transformers, GGUF (llama.cpp) and Ollama.

    from minimind.export import import_minimind_pth, import_hf, export_hf, export_gguf, export_ollama

Each function checks its input strictly and raises MiniMindError (one line naming the file and
the tensor or field) for anything it cannot convert exactly. GGUF and Ollama export need the
`gguf` package (pip install "minimind[export]"), imported only when they run.
"""

from .gguf import export_gguf
from .hf_export import export_hf
from .hf_import import import_hf
from .minimind_pth import import_minimind_pth
from .ollama import export_ollama

__all__ = ["export_gguf", "export_hf", "export_ollama", "import_hf", "import_minimind_pth"]
