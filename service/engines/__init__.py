"""Engines: one interface (``base``), two implementations (``local``: an in-process vLLM; ``remote``: a vLLM
server over HTTP) and their supervision (``pool``)."""
