"""Checks the scenarios run on dsv2-load's JSON (load-tests/run.sh).

usage: python3 lib.py JSON CHECK [ARGS...]
  no-errors                 every request succeeded
  only-codes CODE...        every failure has one of these status codes, and every request ended
  p99-stable FACTOR         the last third's E2E p99 is at most FACTOR x the first third's
  knee                      (a ramp) prints the saturation knee: the highest offered rate
                            whose stage achieved at least 90% of it with TTFT p99 under 5 s
"""
import json
import sys


def main():
    report = json.load(open(sys.argv[1]))
    check, args = sys.argv[2], sys.argv[3:]
    records = report["requests"]
    if not records:
        sys.exit("no requests were sent")
    if check == "no-errors":
        bad = [r for r in records if r["code"] != 0]
        if bad:
            for r in bad[:10]:
                print(f"request {r['index']}: code {r['code']} at {r['start']:.3f}-{r['end']:.3f} s "
                      f"after {r['output_tokens']} tokens: {r['error']}", file=sys.stderr)
            sys.exit(f"{len(bad)} of {len(records)} requests failed")
    elif check == "only-codes":
        names = {"RESOURCE_EXHAUSTED": 8, "UNAVAILABLE": 14, "DEADLINE_EXCEEDED": 4}
        allowed = {names[a] for a in args}
        bad = [r for r in records if r["code"] not in allowed | {0}]
        if bad:
            sys.exit(f"{len(bad)} requests failed otherwise, e.g. code {bad[0]['code']}: "
                     f"{bad[0]['error']}")
    elif check == "p99-stable":
        ok = sorted((r for r in records if r["code"] == 0), key=lambda r: r["start"])
        third = len(ok) // 3

        def p99(rs):
            e = sorted(r["end"] - r["start"] for r in rs)
            return e[min(len(e) - 1, int(0.99 * len(e)))]
        first, last = p99(ok[:third]), p99(ok[-third:])
        if last > float(args[0]) * first:
            sys.exit(f"E2E p99 grew from {first:.3f} s to {last:.3f} s")
    elif check == "knee":
        knee = None
        for st in report["stages"]:
            ok = st["request_rate"] >= 0.9 * st["offered_rate"] and st["ttft_s"]["p99"] < 5
            print(f"offered {st['offered_rate']:g}/s: achieved {st['request_rate']:.2f}/s, "
                  f"TTFT p99 {st['ttft_s']['p99']:.3f} s, TPOT p99 {st['tpot_s']['p99']:.3f} s"
                  f"{'' if ok else '  (saturated)'}")
            if ok and (knee is None or st["offered_rate"] > knee):
                knee = st["offered_rate"]
        print(f"knee: {knee}/s")
        return
    else:
        sys.exit(f"unknown check {check}")
    print(f"{check}: ok ({len(records)} requests)")


if __name__ == "__main__":
    main()
