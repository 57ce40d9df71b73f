"""The COMET scoring worker, run as ``python -m pruning.comet_worker MODEL BATCH_SIZE`` by ``CometScorer`` in a
Python that has unbabel-comet (it pins transformers<5 and huggingface-hub<1, so it cannot share our
environment). It imports nothing of ours: one JSON line of ``[{"src", "mt", "ref"}, ...]`` per batch on stdin,
one ``COMET-SCORES [...]`` line back on stdout."""

import json
import sys

PREFIX = "COMET-SCORES "


def main(model: str, batch_size: int) -> None:
    import torch
    from comet import download_model, load_from_checkpoint

    net = load_from_checkpoint(model if model.endswith(".ckpt") else download_model(model))
    gpus = 1 if torch.cuda.is_available() else 0
    for line in sys.stdin:
        out = net.predict(json.loads(line), batch_size=batch_size, gpus=gpus, progress_bar=False)
        print(PREFIX + json.dumps([float(x) for x in out.scores]), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
