"""An OTLP/HTTP profiles receiver for the agent's tests: decodes each request with the
official opentelemetry-proto classes (from PyPI) and prints what it holds, a JSON line per
request, on stdout. It also takes Pyroscope's ingestion API (POST /ingest): each body is saved
in FOLDER as it came (the tests decode the pprof with their pprof decoder), and its query
printed.

Usage: receiver.py PORT [FOLDER] (PORT 0: any free port). The first line printed is
{"port": N}. A request is answered 200 once decoded, 400 when it does not decode.
"""

import gzip
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from opentelemetry.proto.collector.profiles.v1development.profiles_service_pb2 import (
    ExportProfilesServiceRequest,
    ExportProfilesServiceResponse,
)


# Requests are handled on threads of their own: one line at a time, one file name each.
LOCK = threading.Lock()


def emit(line):
    with LOCK:
        print(json.dumps(line), flush=True)


def any_value(value):
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


def summarize(request):
    """The request as plain data: each resource's attributes and, per profile, its sample
    type and samples (frames root first, value, attributes)."""
    d = request.dictionary
    strings = d.string_table

    def frames(stack_index):
        names = []
        for location_index in d.stack_table[stack_index].location_indices:
            location = d.location_table[location_index]
            for line in location.lines:
                names.append(strings[d.function_table[line.function_index].name_strindex])
        return list(reversed(names))

    def attributes(indices):
        out = {}
        for index in indices:
            attribute = d.attribute_table[index]
            out[strings[attribute.key_strindex]] = any_value(attribute.value)
        return out

    resources = []
    for resource_profiles in request.resource_profiles:
        resource = {
            kv.key: any_value(kv.value) for kv in resource_profiles.resource.attributes
        }
        profiles = []
        for scope_profiles in resource_profiles.scope_profiles:
            for profile in scope_profiles.profiles:
                profiles.append(
                    {
                        "scope": scope_profiles.scope.name,
                        "sample_type": strings[profile.sample_type.type_strindex],
                        "unit": strings[profile.sample_type.unit_strindex],
                        "period": profile.period,
                        "time_unix_nano": profile.time_unix_nano,
                        "duration_nano": profile.duration_nano,
                        "samples": [
                            {
                                "frames": frames(sample.stack_index),
                                "value": sum(sample.values),
                                "attributes": attributes(sample.attribute_indices),
                            }
                            for sample in profile.samples
                        ],
                    }
                )
        resources.append({"attributes": resource, "profiles": profiles})
    return {"resources": resources}


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length)
        url = urlsplit(self.path)
        if url.path == "/ingest":
            self.ingest(url, body)
            return
        try:
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            request = ExportProfilesServiceRequest()
            request.ParseFromString(body)
            line = summarize(request)
        except Exception as error:  # noqa: BLE001 - any decoding failure is the answer
            self.send_response(400)
            self.end_headers()
            emit({"path": self.path, "error": str(error)})
            return
        line["path"] = self.path
        line["content_type"] = self.headers.get("Content-Type")
        line["encoding"] = self.headers.get("Content-Encoding")
        emit(line)
        answer = ExportProfilesServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def ingest(self, url, body):
        query = {key: values[0] for key, values in parse_qs(url.query).items()}
        with LOCK:
            folder = sys.argv[2]
            name = os.path.join(folder, f"ingest-{len(os.listdir(folder)):06}.pb.gz")
            with open(name, "wb") as out:
                out.write(body)
            line = {"path": url.path, "query": query, "file": name}
            line["content_type"] = self.headers.get("Content-Type")
            print(json.dumps(line), flush=True)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    print(json.dumps({"port": server.server_address[1]}), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
