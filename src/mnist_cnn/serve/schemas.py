"""The request and response types of the API, as pydantic models: they write the OpenAPI schema at /docs.

The answers themselves are written by orjson (:func:`mnist_cnn.serve.errors.json_response`) and the
784-number body is checked by hand (:mod:`mnist_cnn.serve.parsing`): validating through pydantic
would cost the hot path more than the model's forward pass.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ErrorBody(BaseModel):
    detail: str = Field(description="what was wrong and what to send instead")
    field: str | None = Field(None, description="the part of the request that was wrong, e.g. pixels[3][7]")


PREDICT_MIN_CONFIDENCE_HELP = "below this probability the answer is flagged uncertain and not_a_digit (also accepted as a query parameter; default: the service's min_confidence)"  # fmt: skip


class PixelsRequest(BaseModel):
    pixels: list[float] | list[list[float]] = Field(description="784 numbers, or 28 rows of 28, row by row; white digit on black like MNIST")  # fmt: skip
    scale: Literal[1, 255] | None = Field(None, description="255: values in 0-255; 1: values in 0-1; default: 255 if any value is above 1")  # fmt: skip
    min_confidence: float | None = Field(None, ge=0, le=1, description=PREDICT_MIN_CONFIDENCE_HELP)


class Prediction(BaseModel):
    label: int = Field(description="the predicted digit: the best guess, given even when the answer is not sure")
    confidence: float = Field(description="the probability of that digit")
    confident: bool = Field(description="confidence is at least min_confidence")
    uncertain: bool = Field(description="confidence is below min_confidence: the model is not sure (not confident)")
    not_a_digit: bool = Field(description="the model is not sure the image shows a digit at all: confidence is below min_confidence (uncertain), or the model's digit gate says it is no digit; label is still the best guess")  # fmt: skip
    min_confidence: float = Field(description="the threshold used: min_confidence of the request, else the service's")
    probabilities: list[float] = Field(description="one probability per digit 0-9")
    input: list[list[int]] = Field(description="the 28x28 image (0-255) the model saw")


class ReadDigit(BaseModel):
    box: list[int] = Field(description="[left, top, right, bottom] of the digit's ink, in the uploaded image's pixels")
    line: int = Field(description="text line the digit is on, 0 for the top one")
    label: int = Field(description="the most probable digit")
    char: str = Field(description="the label, or '?' when confidence is below min_confidence")
    confidence: float = Field(description="the probability of that digit")
    uncertain: bool = Field(description="confidence is below min_confidence")
    probabilities: list[float] = Field(description="one probability per digit 0-9")


class ReadingResult(BaseModel):
    text: str = Field(description="the digits left to right, lines joined by a newline, '?' for an uncertain digit; '' when no digit was found")  # fmt: skip
    found: bool = Field(description="false when the image holds no ink: then text is '' and digits is empty")
    lines: list[str] = Field(description="text, one string per line, top to bottom")
    digits: list[ReadDigit] = Field(description="every digit, line by line, left to right")
    min_confidence: float = Field(description="the threshold used: min_confidence of the request, else the service's")
    detail: str | None = Field(None, description="'no digit found in the image' when found is false")


ERRORS = {
    413: {"model": ErrorBody, "description": "body or image larger than the limits"},
    415: {"model": ErrorBody, "description": "content type or image format not accepted"},
    422: {"model": ErrorBody, "description": "malformed or out-of-range input; `field` names it"},
    503: {"model": ErrorBody, "description": "model loading or queue full; see Retry-After"},
}
PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": PixelsRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "string", "format": "binary", "description": "PNG, JPEG, ... of one digit"},
                        "min_confidence": {
                            "type": "number",
                            "minimum": 0,
                            "maximum": 1,
                            "description": PREDICT_MIN_CONFIDENCE_HELP,
                        },
                    },  # fmt: skip
                    "required": ["image"],
                }
            },
        },
    }
}
MIN_CONFIDENCE_HELP = "digits less probable than this are shown as '?' (also accepted as a query parameter; default: the service's min_confidence)"  # fmt: skip
READ_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {
                            "type": "string",
                            "format": "binary",
                            "description": "PNG, JPEG, ... of a number (digits on one or more lines)",
                        },
                        "min_confidence": {
                            "type": "number",
                            "minimum": 0,
                            "maximum": 1,
                            "description": MIN_CONFIDENCE_HELP,
                        },
                    },
                    "required": ["image"],
                }
            },
        },
    }
}
