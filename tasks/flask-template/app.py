# A Flask task written the way MECAnywhere's example tasks are: the ready line is a plain
# print() at import, before `flask run` binds port 8080, and stdout is not flushed. The
# executor's tests use it to prove such tasks start unchanged.
import json

from flask import Flask, request

app = Flask(__name__)


@app.route("/", methods=["POST"])
def entry_point():
    data = request.json
    print("Input:", data)
    return json.dumps(data)


print("meca-init-done")
