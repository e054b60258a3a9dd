"""The model file formats Pensieve runs, read and checked in one place.

* :mod:`.gguf`: the one strict GGUF header reader (magic, version, every key/value, every tensor
  description, that the data lies inside the file), its context length and architecture, split files;
* :mod:`.mlx`: MLX model folders (config.json, complete safetensors, a tokenizer);
* :mod:`.engines`: which architectures each engine runs, and ``engines_for(entry)``.

Import (``models import``), pull (``models pull``), the GGUF→MLX conversion and engine choice all
ask these modules, so a file is judged the same way wherever it comes from.
"""
