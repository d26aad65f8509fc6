"""Plot where a content request's time goes, stage by stage, from the records a running app has stored.

    python -m scripts.plot_pipeline --url http://127.0.0.1:8000 --requests 10 --out docs/pipeline-stages.png

Makes ``--requests`` content requests first (0 to only plot what is stored), then draws one bar per record:
the article, then image, audio and recommendations (which run side by side), then storing.
"""

from __future__ import annotations

import argparse

import httpx


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--out", default="docs/pipeline-stages.png")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with httpx.Client(base_url=args.url, timeout=300) as client:
        for i in range(args.requests):
            client.post("/v1/content", json={"topic": f"topic {i}", "user_id": f"user-{i}"}).raise_for_status()
        records = client.get("/v1/content", params={"limit": max(args.requests, 10)}).json()["items"][::-1]
    stages = ["article", "image", "audio", "recommendations", "store"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for row, record in enumerate(records):
        t = record["timings_ms"]
        ax.barh(row, t["article"], color="#4c72b0", label="article" if row == 0 else None)
        for offset, (stage, color) in enumerate(zip(stages[1:4], ["#dd8452", "#55a868", "#8172b3"], strict=True)):
            if stage in t:
                ax.barh(
                    row + (offset - 1) * 0.25,
                    t[stage],
                    left=t["article"],
                    height=0.25,
                    color=color,
                    label=stage if row == 0 else None,
                )
        media = max(t.get(s, 0) for s in stages[1:4])
        ax.barh(row, t.get("store", 0), left=t["article"] + media, color="#c44e52", label="store" if row == 0 else None)
    ax.set_xlabel("milliseconds since the request arrived")
    ax.set_ylabel("content request")
    ax.set_title("Content pipeline: article, then image ‖ audio ‖ recommendations, then store (tiny profile, CPU)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
