"""A real SMTP server for the alert tests: aiosmtpd, appending each message
it accepts to a file as one JSON line ({"from", "to", "data"}).

usage: smtp_sink.py PORT FILE
"""
import json
import sys
import time

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, path):
        self.path = path

    async def handle_DATA(self, server, session, envelope):
        line = json.dumps({
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "data": envelope.content.decode("utf-8", "replace"),
        })
        with open(self.path, "a") as out:
            out.write(line + "\n")
        return "250 OK"


controller = Controller(Sink(sys.argv[2]), hostname="127.0.0.1", port=int(sys.argv[1]))
controller.start()
while True:
    time.sleep(3600)
