"""Exports a law-department classification split from china-laws.db as JSONL for
modules/examples/gemma_laws.rs: for each of the 8 `law_department` classes, `train`
articles from some laws and `test` articles from other laws (no law on both sides, so the
held-out score is not memorized wording of one statute).

    python3 bench/gemma_laws_export.py [train_per_class] [test_per_class] > /var/tmp/gemma-laws.jsonl
"""

import json
import os
import random
import sqlite3
import sys

ASSETS = os.environ.get("TAILOR_ASSETS", "/var/tmp/tailor-assets")
train_n = int(sys.argv[1]) if len(sys.argv) > 1 else 40
test_n = int(sys.argv[2]) if len(sys.argv) > 2 else 20
rng = random.Random(7)
db = sqlite3.connect(os.path.join(ASSETS, "china-laws.db"))
rows = db.execute(
    "select law_id, law_name, law_department, article_text from articles "
    "where law_department is not null and length(article_text) >= 20"
).fetchall()
by_class = {}
for law_id, law_name, dept, text in rows:
    by_class.setdefault(dept, {}).setdefault(law_id, []).append((law_name, text))
for dept in sorted(by_class):
    laws = sorted(by_class[dept])
    rng.shuffle(laws)
    cut = max(1, len(laws) // 3)
    for split, chosen, n in (("test", laws[:cut], test_n), ("train", laws[cut:], train_n)):
        pool = [(law, a) for law in chosen for a in by_class[dept][law]]
        rng.shuffle(pool)
        for law, (name, text) in pool[:n]:
            print(json.dumps({"split": split, "label": dept, "law": name, "text": text}, ensure_ascii=False))
