"""Alerts for an operator: once per track that stays unmasked or wears its mask wrong for --alert_after seconds, a
command is run (--alert CMD: the alert as JSON on its standard input and MASKTK_* variables) and/or the alert is
posted as JSON to a URL (--alert_url), with the track's id, time and a face crop. Neither given: nothing is done.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2


@dataclass(frozen=True)
class AlertRule:
    command: str | None
    url: str | None
    after_s: float
    folder: Path  # face crops of alerted tracks are written here
    source: str


class NoAlerts:
    """Alerts off."""

    def check(self, tracks, t):
        return 0

    def close(self):
        pass


class Alerts:
    def __init__(self, rule):
        self.rule, self.running, self.sent = rule, [], 0

    def check(self, tracks, t):
        """Fires for every track bad for at least after_s seconds that has not fired yet. -> alerts fired now."""
        due = [tr for tr in tracks.tracks.values() if not tr.alerted and tr.bad_since is not None
               and t - tr.bad_since >= self.rule.after_s]
        for tr in due:
            tr.alerted = True
            self.fire(self.payload(tracks, tr, t))
        return len(due)

    def payload(self, tracks, tr, t):
        crop = None
        if tr.best_face[1] is not None and tr.best_face[1].size:
            self.rule.folder.mkdir(parents=True, exist_ok=True)
            crop = self.rule.folder / f"{self.rule.source}_track{tr.id}.jpg"
            cv2.imwrite(str(crop), tr.best_face[1])
        f = tracks.decided(tr.probs)
        return {"source": self.rule.source, "track": tr.id, "time": round(t, 3), "since": round(tr.bad_since, 3),
                "mask": f["mask"], "mask_name": f["mask_name"], "probability": round(float(tr.probs.max()), 5),
                "crop": str(crop) if crop else None}

    def fire(self, alert):
        self.sent += 1
        print(f"alert: track {alert['track']} {alert['mask_name']} since {alert['since']:.1f} s", file=sys.stderr,
              flush=True)
        if self.rule.command:
            env = {**os.environ, "MASKTK_TRACK": str(alert["track"]), "MASKTK_TIME": str(alert["time"]),
                   "MASKTK_MASK": alert["mask_name"], "MASKTK_CROP": alert["crop"] or "",
                   "MASKTK_SOURCE": alert["source"]}
            p = subprocess.Popen(self.rule.command, shell=True, stdin=subprocess.PIPE, env=env)
            threading.Thread(target=p.communicate, args=(json.dumps(alert).encode(),), daemon=True).start()
            self.running.append(p)
        if self.rule.url:
            t = threading.Thread(target=post_json, args=(self.rule.url, alert), daemon=True)
            t.start()
            self.running.append(t)

    def close(self):
        """Waits for the alerts under way (30 s each at most), so that none is cut off at the end of the run."""
        for r in self.running:
            if isinstance(r, threading.Thread):
                r.join(timeout=30)
            else:
                try:
                    r.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    print(f"warning: --alert command still running after 30 s (pid {r.pid}); left running",
                          file=sys.stderr)


def post_json(url, alert):
    import urllib.request
    req = urllib.request.Request(url, json.dumps(alert).encode(), {"Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=10).close()
    except Exception as e:  # a receiver that is down must not stop the watching
        print(f"warning: --alert_url {url}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)


def create_alerts(rule):
    return Alerts(rule) if rule.command or rule.url else NoAlerts()
