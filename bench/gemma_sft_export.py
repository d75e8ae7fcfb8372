"""Exports prompt–response pairs from china-laws.db for modules/examples/gemma_sft.rs:
the prompt asks which law an article (cut to 80 characters) comes from, the response is the
law's name. Articles of 12 laws are split at random, so held-out articles come from laws seen
in training (an organization tuning on its own statutes).

    python3 bench/gemma_sft_export.py [train] [test] > /var/tmp/gemma-sft.jsonl
"""

import json
import os
import random
import sqlite3
import sys

ASSETS = os.environ.get("TAILOR_ASSETS", "/var/tmp/tailor-assets")
train_n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
test_n = int(sys.argv[2]) if len(sys.argv) > 2 else 40
rng = random.Random(11)
db = sqlite3.connect(os.path.join(ASSETS, "china-laws.db"))
laws = [r[0] for r in db.execute(
    "select law_name from articles where status is null or status not like '%废止%' "
    "group by law_name having count(*) >= 60 order by law_name")]
rng.shuffle(laws)
laws = sorted(laws[:12])
rows = []
for law in laws:
    for (text,) in db.execute("select article_text from articles where law_name = ? and length(article_text) >= 30", (law,)):
        rows.append((law, text))
rng.shuffle(rows)
for i, (law, text) in enumerate(rows[: train_n + test_n]):
    prompt = "下面这条法律条文出自哪部法律？\n" + text.replace("\n", " ")[:80]
    split = "train" if i < train_n else "test"
    print(json.dumps({"split": split, "prompt": prompt, "response": law}, ensure_ascii=False))
