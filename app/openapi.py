"""The OpenAPI description of the HTTP API, served at ``/openapi.json``."""

from __future__ import annotations

from typing import Any

from app.settings import Settings

__all__ = ["openapi_document"]

_ERROR = {
    "description": "What is wrong, in words",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"error": {"type": "string"}},
                "required": ["error"],
            }
        }
    },
}

_FEATURES = {
    "type": "object",
    "required": ["member_id", "as_of", "known", "recent_actions", "counts"],
    "properties": {
        "member_id": {"type": "string"},
        "as_of": {"type": "number"},
        "known": {"type": "boolean"},
        "last_event_ts": {"type": "number", "nullable": True},
        "last_applied_at": {"type": "number", "nullable": True},
        "attribute_store": {"type": "string", "enum": ["unavailable"]},
        "recent_actions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["event_id", "item_id", "action", "ts", "attributes"],
                "properties": {
                    "event_id": {"type": "string"},
                    "item_id": {"type": "string"},
                    "action": {"type": "string"},
                    "ts": {"type": "number"},
                    "attributes": {"type": "object"},
                    "joined": {"type": "boolean"},
                    "missing": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
        "counts": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "additionalProperties": {"type": "integer"},
            },
        },
    },
}

_FRESHNESS = {
    "type": "object",
    "required": ["events", "p50", "p99"],
    "properties": {
        "events": {"type": "integer"},
        "p50": {"type": "number", "nullable": True},
        "p99": {"type": "number", "nullable": True},
    },
}

_SYSTEM = {
    "type": "object",
    "required": [
        "now",
        "worker",
        "ready",
        "ingest",
        "freshness",
        "lag",
        "dead_letters",
        "attribute_store",
        "partitions",
        "model",
        "series",
        "recent_members",
    ],
    "properties": {
        "now": {"type": "number"},
        "worker": {"type": "string"},
        "ready": {"type": "boolean"},
        "reason": {"type": "string"},
        "ingest": {
            "type": "object",
            "required": ["per_s", "events_in", "applied", "dropped"],
            "properties": {
                "per_s": {"type": "number"},
                "events_in": {"type": "number"},
                "applied": {"type": "number"},
                "dropped": {"type": "object", "additionalProperties": {"type": "number"}},
            },
        },
        "freshness": {"type": "object", "additionalProperties": _FRESHNESS},
        "alive": {"type": "boolean"},
        "liveness": {"type": "string"},
        "lag": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["topic", "partition", "lag", "stalled_seconds"],
                "properties": {
                    "topic": {"type": "string"},
                    "partition": {"type": "integer"},
                    "lag": {"type": "integer"},
                    "stalled_seconds": {"type": "number"},
                },
            },
        },
        "dead_letters": {"type": "object", "additionalProperties": {"type": "number"}},
        "attribute_store": {"type": "object"},
        "partitions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["partition", "here", "owner"],
                "properties": {
                    "partition": {"type": "integer"},
                    "here": {"type": "boolean"},
                    "owner": {"type": "string", "nullable": True},
                },
            },
        },
        "model": {
            "type": "object",
            "required": ["version", "ranker"],
            "properties": {"version": {"type": "string"}, "ranker": {"type": "string"}},
        },
        "topics": {"type": "object", "additionalProperties": {"type": "string"}},
        "stall_timeout": {"type": "number"},
        "series": {"type": "object"},
        "recent_members": {"type": "array", "items": {"type": "string"}},
    },
}

_CONSOLE_RANKING = {
    "type": "object",
    "required": ["model_version", "ranker", "items"],
    "properties": {
        "model_version": {"type": "string"},
        "ranker": {"type": "string"},
        "last_applied_at": {"type": "number", "nullable": True},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["item_id", "score"],
                "properties": {
                    "item_id": {"type": "string"},
                    "score": {"type": "number"},
                    "unknown": {"type": "boolean"},
                    "category": {"type": "string", "nullable": True},
                    "company": {"type": "string", "nullable": True},
                },
            },
        },
    },
}


def openapi_document(settings: Settings) -> dict[str, Any]:
    id_string = {"type": "string", "minLength": 1, "maxLength": 256}
    security: list[dict[str, list[str]]] = [{"bearer": []}] if settings.api_token else []
    v1_errors = {"400": _ERROR, "503": _ERROR}
    most = settings.max_candidates - 1  # commas between the candidates of a console ranking
    if settings.api_token:
        v1_errors["401"] = _ERROR
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "nearline",
            "version": "0.1.0",
            "description": "Fresh member features and recommendations from the online store.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/v1/members/{member_id}/features": {
                "get": {
                    "summary": "A member's recent actions and windowed counts",
                    "security": security,
                    "parameters": [
                        {"name": "member_id", "in": "path", "required": True, "schema": id_string},
                        {
                            "name": "as_of",
                            "in": "query",
                            "required": False,
                            "description": "Unix seconds; the state as of then",
                            "schema": {"type": "number", "minimum": 0},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "The member's features (empty when unknown)",
                            "content": {"application/json": {"schema": _FEATURES}},
                        },
                        **v1_errors,
                    },
                }
            },
            "/v1/recommendations": {
                "post": {
                    "summary": "Rank candidate items for a member",
                    "security": security,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["member_id", "candidates"],
                                    "properties": {
                                        "member_id": id_string,
                                        "candidates": {
                                            "type": "array",
                                            "minItems": 1,
                                            "maxItems": settings.max_candidates,
                                            "items": id_string,
                                        },
                                        "k": {
                                            "type": "integer",
                                            "minimum": 1,
                                            "maximum": settings.max_candidates,
                                            "nullable": True,
                                        },
                                        "context": {"type": "object", "nullable": True},
                                        "features_as_of": {
                                            "type": "number",
                                            "minimum": 0,
                                            "nullable": True,
                                        },
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "Candidates ranked by score, best first",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "required": ["request_id", "model_version", "items"],
                                        "properties": {
                                            "request_id": {"type": "string"},
                                            "model_version": {"type": "string"},
                                            "ranker": {"type": "string"},
                                            "items": {
                                                "type": "array",
                                                "items": {
                                                    "type": "object",
                                                    "required": ["item_id", "score"],
                                                    "properties": {
                                                        "item_id": {"type": "string"},
                                                        "score": {"type": "number"},
                                                        "unknown": {"type": "boolean"},
                                                    },
                                                },
                                            },
                                        },
                                    }
                                }
                            },
                        },
                        "413": _ERROR,
                        "422": _ERROR,
                        **v1_errors,
                    },
                }
            },
            "/v1/console/system": {
                "get": {
                    "summary": "The console's system view of this worker",
                    "description": "Ingest rate, freshness p50/p99 (1 and 5 min), consumer lag "
                    "per partition, dead letters by reason, attribute store health, partition "
                    "owners, the active model, and per-second series for charts.",
                    "security": security,
                    "responses": {
                        "200": {
                            "description": "The system view",
                            "content": {"application/json": {"schema": _SYSTEM}},
                        },
                        **v1_errors,
                    },
                }
            },
            "/v1/console/members/{member_id}/ranking": {
                "get": {
                    "summary": "The member's ranking of candidates now, not logged",
                    "description": "What /v1/recommendations would answer, without writing to "
                    "the recommendations log (a preview is no impression). Ranked by the worker "
                    "owning the member.",
                    "security": security,
                    "parameters": [
                        {"name": "member_id", "in": "path", "required": True, "schema": id_string},
                        {
                            "name": "candidates",
                            "in": "query",
                            "required": False,
                            "description": "Comma-separated item ids (at most "
                            "NEARLINE_MAX_CANDIDATES, each at most 256 characters); when it "
                            "names none, the demo catalogue sample (item-0 .. item-23)",
                            "schema": {
                                "type": "string",
                                "pattern": rf"^[^,]{{0,256}}(,[^,]{{0,256}}){{0,{most}}}$",
                            },
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "Candidates ranked by score, best first",
                            "content": {"application/json": {"schema": _CONSOLE_RANKING}},
                        },
                        "422": _ERROR,
                        **v1_errors,
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "responses": {
                        "200": {"description": "alive and making progress"},
                        "503": {"description": "stalled: a partition with lag applies nothing"},
                    },
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Readiness",
                    "responses": {
                        "200": {"description": "ready"},
                        "503": {"description": "not ready"},
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "text"}},
                }
            },
        },
    }
