"""Dataset preparation: one script per dataset, text ──► tokenizer ──► train.bin / val.bin / meta.json.

  pydoc_char        the Python docs bundled with the interpreter, char-level (offline default)
  shakespeare_char  tiny Shakespeare, char-level
  shakespeare       tiny Shakespeare, GPT-2 BPE
  shakespeare_docs  tiny Shakespeare, GPT-2 BPE, one document per speech (<|endoftext|> before each)
  owt               OpenWebText (or any HF dataset / local text files), GPT-2 BPE

Each runs as `python prepare/<name>.py` or `python -m prepare.<name>` and exposes
`prepare(out_dir, ...) -> meta`; `prepare.common` holds the on-disk format.
"""
