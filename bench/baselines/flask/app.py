# The usual Flask tutorial model server: load the model at import, predict one row per request.
import os

import joblib
from flask import Flask, jsonify, request

app = Flask(__name__)
model = joblib.load(os.environ.get("MODEL_PATH", "model.joblib"))


@app.route("/predict", methods=["POST"])
def predict():
    features = request.get_json()["features"]
    prediction = model.predict([features])
    return jsonify({"prediction": prediction[0].item()})


@app.route("/health", methods=["GET"])
def health():
    return jsonify({"status": "ok"})
