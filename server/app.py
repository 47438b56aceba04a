"""The web page's server: one model loaded once and shared, a JSON API the page and scripts use, and the page.

    GET  /                 the page (server/static/index.html; no build step, nothing from a CDN)
    GET  /api/model        what the page needs to know: decoding options, layers, heads, patch grid
    POST /api/caption      multipart/form-data: `image` (the file) and, optionally, any field of
                           DecodingOptions, `region` ("x0,y0,x1,y1" in the image's pixels) and
                           `attention` ("false" leaves the maps out) -> captions, words, maps
    GET  /docs             the OpenAPI page

Captioning goes through captioner.Captioner, the same code as generate.py and the Python API. An upload
stays in memory: no file a client sends is written to disk, and no path a client sends is ever opened.
A bad upload gets a 4xx with a one-line reason, and the server goes on serving.
"""

import dataclasses
import io
import threading
import time
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile

from captioner.flags import field_comments
from data.images import ImageError, ImageTooLarge, load_image, view_geometry
from data.regions import RegionError, parse_box
from model.sampling import DecodingOptions

STATIC = Path(__file__).parent / "static"
FORM_OVERHEAD = 64 * 1024  # bytes a request may carry beyond the image: the form fields and multipart framing


class UploadLimit:
    """ASGI middleware: a request body over `max_bytes` gets 413 before it is read further."""

    def __init__(self, app, max_bytes):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.max_bytes:
            return await self.refuse(send)
        received, started = 0, False

        async def counted_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise TooLarge
            return message

        async def watched_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except TooLarge:
            if not started:
                await self.refuse(send)

    async def refuse(self, send):
        limit = (self.max_bytes - FORM_OVERHEAD) / 1e6
        await JSONResponse({"detail": f"the upload is larger than the {limit:g} MB this server accepts"},
                           status_code=413)({"type": "http"}, None, send)


class TooLarge(Exception):
    pass


def nested(tensor, digits=4):
    """A tensor as nested lists of rounded floats, for JSON."""
    return None if tensor is None else tensor.float().mul(10**digits).round().div(10**digits).tolist()


def decoding_options(form):
    """DecodingOptions from the form's fields (each optional; an empty field means the default)."""
    values = {}
    for f in dataclasses.fields(DecodingOptions):
        text = form.get(f.name)
        if text is None or str(text).strip() == "":
            continue
        try:
            values[f.name] = f.type(str(text).strip())
        except ValueError:
            kind = "a whole number" if f.type is int else "a number"
            raise ValueError(f"{f.name} must be {kind}, not {str(text)[:40]!r}") from None
    return DecodingOptions(**values)


def create_app(captioner, max_bytes=5_000_000, max_pixels=40_000_000, name="model"):
    """The FastAPI app serving `captioner`. max_bytes: the largest image upload; max_pixels: the largest
    image once decoded (a small file can hold a huge picture)."""
    app = FastAPI(title="captioner", description=__doc__, docs_url="/docs")
    app.add_middleware(UploadLimit, max_bytes=max_bytes + FORM_OVERHEAD)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    lock = threading.Lock()  # one caption at a time: both CPU cores go to it, and requests never interleave
    model = captioner.model
    decoder = model.decoder.config

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/api/model")
    def model_info():
        """The model's shape and the decoding options the page offers, each with its default and meaning."""
        comments = field_comments(DecodingOptions)
        return {
            "name": name,
            "grid": model.encoder.config.grid,
            "layers": decoder.layers,
            "heads": decoder.heads,
            "cross_attention": decoder.cross_attention,
            "max_bytes": max_bytes,
            "options": [{"name": f.name, "type": f.type.__name__, "default": f.default, "help": comments[f.name]}
                        for f in dataclasses.fields(DecodingOptions)],
        }

    def caption_bytes(data, filename, options, region, attention):
        image = load_image(io.BytesIO(data), max_pixels, name=filename)
        image.filename = filename  # named in region messages
        started = time.perf_counter()
        with lock:
            result = captioner.caption(image, region=region, attention=True, **dataclasses.asdict(options))
        W, H = image.size
        S, sx, sy, ox, oy = view_geometry(captioner.preprocess, W, H)
        return {
            "captions": result.texts,
            "words": result.words,
            "width": W,
            "height": H,
            "view_box": [ox / sx, oy / sy, (S + ox) / sx, (S + oy) / sy],  # the part of the image the model sees
            "grid": model.encoder.config.grid,
            "attention": nested(result.cross_attention) if attention else None,  # (layers, heads, words, grid, grid)
            "rollout": nested(result.rollout) if attention else None,  # (grid, grid)
            "region": nested(result.region.float(), 0) if result.region is not None else None,
            "seconds": round(time.perf_counter() - started, 3),
        }

    caption_fields = {f.name: {"type": "string", "description": comment}
                      for f, comment in zip(dataclasses.fields(DecodingOptions), field_comments(DecodingOptions).values())}
    schema = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["image"],
        "properties": {"image": {"type": "string", "format": "binary", "description": "the image file"},
                       "region": {"type": "string", "description": "x0,y0,x1,y1 in the image's pixels"},
                       "attention": {"type": "string", "description": "\"false\" leaves the maps out"},
                       **caption_fields}}}}}}

    @app.post("/api/caption", openapi_extra=schema)
    async def caption(request: Request):
        """Caption one uploaded image; with its words' cross-attention maps and the encoder's rollout."""
        try:
            form = await request.form(max_files=1, max_fields=32)
        except Exception as e:  # a malformed multipart body
            raise HTTPException(400, f"not a multipart/form-data upload ({str(e)[:80]})") from None
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise HTTPException(400, "send the image as the multipart/form-data file field 'image'")
        filename = Path(upload.filename or "upload").name[:80]  # only named in messages, never opened
        data = await upload.read()
        if not data:
            raise HTTPException(400, f"{filename}: the upload is empty")
        try:
            options = decoding_options(form)
            region = parse_box(form["region"]) if form.get("region") else None
        except ValueError as e:  # an option out of range, or a region that is not four numbers
            raise HTTPException(400, str(e)) from None
        attention = str(form.get("attention", "true")).lower() != "false"
        try:
            return await run_in_threadpool(caption_bytes, data, filename, options, region, attention)
        except ImageTooLarge as e:
            raise HTTPException(413, str(e)) from None
        except (ImageError, RegionError) as e:
            raise HTTPException(400, str(e)) from None

    return app
