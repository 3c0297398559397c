"""HTTP routes of `lifelong serve` (FastAPI): OpenAI's chat, models and errors, plus feedback.

  POST /v1/chat/completions        chat (stream: true for server-sent events in OpenAI's chunk format)
  GET  /v1/chat/completions/{id}   a stored completion of the caller's tenant
  GET  /v1/models[/{id}]           the served model, with the caller's live adapter version
  POST /v1/feedback                {"completion_id", "choice"?, one of "rating" | "score" | "correction"}
  GET  /v1/adapters                the caller's adapter versions and the gate's verdicts (operators: all)
  GET  /v1/monitor/flags           the reasoning monitor's flags (operator keys only)
  POST /v1/documents               teach a document: JSON {"name", "text"}, or a multipart form with a
                                   "file" (.txt, .md, .pdf) and optionally a "name"
  GET  /v1/documents[/{id}]        the caller's documents (one: with its chunks)
  DELETE /v1/documents/{id}        delete a document and its chunks from memory
  GET  /v1/memory                  the caller's memory items (corrections, rated answers, chunks);
                                   ?include_deleted=true: deleted ones too, with `forgotten_version`
  DELETE /v1/memory/{id}           delete one item; says whether it was already consolidated
  GET  /health                     liveness, no key needed

Authentication is `Authorization: Bearer <key>`; the key names the tenant. Bodies are parsed here
(not by FastAPI) so that the key is checked before the body and every failure gets an OpenAI-style
error. Blocking work (the model, SQLite fsyncs) runs in worker threads, never on the event loop.
A stream is fed from its worker thread through an asyncio queue: the response (and its status)
starts only once the request is stored, so a bad request still gets its error status; tokens go out
as they are sampled; [DONE] only after the choices are stored.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from lifelong.serve.config import TenantKey
from lifelong.serve.protocol import (
    ApiError,
    ChatRequest,
    ChatResult,
    DocumentRequest,
    FeedbackRequest,
    StreamHead,
    completion_body,
    deleted_body,
    document_body,
    memory_body,
    model_body,
    parse_form,
    parse_json,
    stream_end,
    stream_error,
    stream_piece,
    stream_start,
    validation_error,
)
from lifelong.serve.service import ChatService


def build_app(service: ChatService, keys: dict[str, TenantKey], lifespan: Any = None) -> FastAPI:
    app = FastAPI(title="lifelong serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.service = service
    running: set[asyncio.Future[None]] = set()  # streams' generation tasks
    max_bytes = service.config.max_body_bytes

    def authenticate(request: Request) -> TenantKey:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(
                401,
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
                code="missing_api_key",
            )
        token = token.strip()
        found = None
        for key, tenant in keys.items():  # compare with every key in constant time
            if hmac.compare_digest(key.encode(), token.encode()):
                found = tenant
        if found is None:
            raise ApiError(401, "Incorrect API key provided.", code="invalid_api_key")
        return found

    async def raw_of(request: Request, limit: int) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise ApiError(413, f"request body is {length} bytes; the limit is {limit}", code="request_too_large")
        raw = await request.body()
        if len(raw) > limit:
            raise ApiError(413, f"request body is {len(raw)} bytes; the limit is {limit}", code="request_too_large")
        return raw

    async def body_of(request: Request) -> dict[str, Any]:
        return parse_json(await raw_of(request, max_bytes), max_bytes)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        err = ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=code)
        return JSONResponse(err.body(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _query_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        err = ApiError(400, f"{param}: {first.get('msg', 'invalid value')}", param=param, code="invalid_value")
        return JSONResponse(err.body(), status_code=400)

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception) -> JSONResponse:
        err = ApiError(500, f"internal error ({type(exc).__name__}); the request was not answered", "server_error")
        return JSONResponse(err.body(), status_code=500)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": service.model_id}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> JSONResponse | StreamingResponse:
        who = authenticate(request)
        body = await body_of(request)
        try:
            req = ChatRequest.model_validate(body)
        except ValidationError as exc:
            raise validation_error(exc) from None
        if req.stream:
            return await stream(who.tenant, req, body)
        result = await run_in_threadpool(service.chat, who.tenant, req, body)
        return JSONResponse(completion_body(result))

    async def stream(tenant: str, req: ChatRequest, body: dict[str, Any]) -> StreamingResponse:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()  # StreamHead, (choice, piece), ChatResult or an exception

        def put(item: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work() -> None:
            try:
                put(service.chat(tenant, req, body, on_start=put, on_text=lambda i, piece: put((i, piece))))
            except BaseException as exc:  # whatever it is, the stream must hear of it, not wait forever
                put(exc)

        # Held until done: the answer is generated and stored even if the client leaves mid-stream.
        task = asyncio.ensure_future(run_in_threadpool(work))
        running.add(task)
        task.add_done_callback(running.discard)
        head = await queue.get()
        if isinstance(head, BaseException):  # refused before anything was stored: a normal error reply
            raise head
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def events(head: StreamHead) -> AsyncIterator[str]:
            sent = [""] * req.n
            for chunk in stream_start(head, req.n, include_usage):
                yield chunk
            while True:
                item = await queue.get()
                if isinstance(item, ChatResult):
                    break
                if isinstance(item, BaseException):
                    err = item if isinstance(item, ApiError) else None
                    yield stream_error(err or ApiError(500, f"internal error ({type(item).__name__})", "server_error"))
                    return
                i, piece = item
                sent[i] += piece
                yield stream_piece(head, i, piece, include_usage)
            for chunk in stream_end(item, include_usage, sent):
                yield chunk
            await task

        return StreamingResponse(events(head), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/v1/chat/completions/{completion_id}")
    async def retrieve(completion_id: str, request: Request) -> JSONResponse:
        who = authenticate(request)
        result = await run_in_threadpool(service.retrieve, who.tenant, completion_id)
        return JSONResponse(completion_body(result))

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        who = authenticate(request)
        version, updated = service.adapter_of(who.tenant)
        return {"object": "list", "data": [model_body(service.model_id, who.tenant, version, service.created, updated)]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request) -> dict[str, Any]:
        who = authenticate(request)
        service.check_model(model_id)
        version, updated = service.adapter_of(who.tenant)
        return model_body(service.model_id, who.tenant, version, service.created, updated)

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> dict[str, Any]:
        who = authenticate(request)
        body = await body_of(request)
        try:
            req = FeedbackRequest.model_validate(body)
        except ValidationError as exc:
            raise validation_error(exc) from None
        fb = await run_in_threadpool(service.feedback, who.tenant, req)
        return {
            "id": f"fb-{fb.id}",
            "object": "feedback",
            "completion_id": fb.request_id,
            "choice": fb.index,
            "kind": fb.kind,
            "stored": True,
            "held_out": fb.holdout,
        }

    @app.get("/v1/adapters")
    async def adapters(request: Request) -> dict[str, Any]:
        who = authenticate(request)
        records = await run_in_threadpool(service.store.adapters, None if who.operator else who.tenant)
        live = service.bank.versions()
        if not who.operator:
            live = {who.tenant: live.get(who.tenant, 0)}
        return {"object": "list", "data": [asdict(r) for r in records], "live": live}

    @app.get("/v1/monitor/flags")
    async def flags(request: Request, after: int = 0, limit: int = 100, tenant: str | None = None) -> dict[str, Any]:
        who = authenticate(request)
        if not who.operator:
            raise ApiError(403, "monitor flags are for operator keys only", "permission_error", code="not_operator")
        data = await run_in_threadpool(service.flags, after, min(max(limit, 1), 1000), tenant)
        return {"object": "list", "data": data}

    # ---- memory and documents ---------------------------------------------------------------------
    @app.post("/v1/documents")
    async def add_document(request: Request) -> dict[str, Any]:
        who = authenticate(request)
        # room for JSON escapes and form framing; the document's own size is checked on its bytes
        raw = await raw_of(request, 2 * service.config.max_document_bytes + 65536)
        content_type = request.headers.get("content-type", "application/json")
        if content_type.startswith("multipart/form-data"):
            fields = parse_form(raw, content_type)
            if "file" not in fields:
                raise ApiError(400, "send the document as a form field named 'file'", param="file", code="missing_file")
            filename, data = fields["file"]
            name = fields["name"][1].decode("utf-8", "replace") if "name" in fields else filename or ""
            doc, superseded = await run_in_threadpool(service.add_document, who.tenant, name, data)
        elif content_type.startswith("application/json"):
            try:
                req = DocumentRequest.model_validate(parse_json(raw, len(raw)))
            except ValidationError as exc:
                raise validation_error(exc) from None
            doc, superseded = await run_in_threadpool(service.add_document, who.tenant, req.name, None, req.text)
        else:
            raise ApiError(
                415,
                f"a document is sent as application/json or multipart/form-data, not {content_type.split(';')[0]}",
                code="unsupported_media_type",
            )
        return document_body(doc, superseded)

    @app.get("/v1/documents")
    async def documents(request: Request) -> dict[str, Any]:
        who = authenticate(request)
        docs = await run_in_threadpool(service.store.documents, who.tenant)
        return {"object": "list", "data": [document_body(d) for d in docs]}

    @app.get("/v1/documents/{document_id}")
    async def document(document_id: str, request: Request) -> dict[str, Any]:
        who = authenticate(request)
        doc, chunks = await run_in_threadpool(service.document, who.tenant, document_id)
        return {**document_body(doc), "items": [memory_body(c) for c in chunks]}

    @app.delete("/v1/documents/{document_id}")
    async def delete_document(document_id: str, request: Request) -> dict[str, Any]:
        who = authenticate(request)
        doc, chunks = await run_in_threadpool(service.delete_document, who.tenant, document_id)
        versions = [c.consolidated_version for c in chunks if c.consolidated_version is not None]
        return deleted_body(doc.id, "document", max(versions, default=None))

    @app.get("/v1/memory")
    async def memory(request: Request, kind: str | None = None, include_deleted: bool = False) -> dict[str, Any]:
        who = authenticate(request)
        items = await run_in_threadpool(
            lambda: service.store.memory_items(tenant=who.tenant, kind=kind, include_deleted=include_deleted)
        )
        return {"object": "list", "data": [memory_body(i) for i in items]}

    @app.delete("/v1/memory/{item_id}")
    async def delete_memory(item_id: str, request: Request) -> dict[str, Any]:
        who = authenticate(request)
        item = await run_in_threadpool(service.delete_memory, who.tenant, item_id)
        return deleted_body(item.id, "memory_item", item.consolidated_version)

    return app
