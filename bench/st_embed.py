"""sentence-transformers' throughput on the sentences tvs's embedding bench wrote.

Called by `cargo bench -p tvs --bench embed` with the interpreter in TVS_BENCH_PYTHON (a venv
with sentence-transformers); prints one JSON line per thread count.
    argv: MODEL_DIR SENTENCES_JSON BATCH ROUNDS
"""

import json
import sys
import time

import torch
from sentence_transformers import SentenceTransformer


def main() -> None:
    model_dir, sentences_path, batch, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    sentences = json.load(open(sentences_path))
    # tvs's model dir holds only the weights, tokenizer and config: sentence-transformers then
    # builds mean pooling itself; max length and normalisation are set as the full model sets them.
    model = SentenceTransformer(model_dir, device="cpu")
    model.max_seq_length = 256
    for threads in (1, 2):
        torch.set_num_threads(threads)
        model.encode(sentences[:batch], batch_size=batch, normalize_embeddings=True)
        best = 0.0
        for _ in range(rounds):
            start = time.perf_counter()
            model.encode(sentences, batch_size=batch, normalize_embeddings=True)
            best = max(best, len(sentences) / (time.perf_counter() - start))
        print(json.dumps({"threads": threads, "sentences_per_s": best}), flush=True)


if __name__ == "__main__":
    main()
