"""The web page's server: one model loaded once and shared, a JSON API the page and scripts use, and the page.

    GET  /                 the page (server/static/index.html; no build step, nothing from a CDN)
    GET  /api/model        what the page needs to know: decoding options, layers, heads, patch grid
    POST /api/caption      multipart/form-data: `image` (the file) and, optionally, any field of
                           DecodingOptions, `region` ("x0,y0,x1,y1" in the image's pixels) and
                           `attention` ("false" leaves the maps out) -> captions, words, maps
    GET  /docs             the API's reference, drawn from /openapi.json by the page's own script (offline)

Captioning goes through captioner.Captioner, the same code as generate.py and the Python API. No path a
client sends is ever opened and no upload is kept: it is read into memory (Starlette spools one over 1 MB
to an anonymous temporary file while the form is parsed) and dropped after its answer. A bad upload or an
option beyond the server's limits (server/limits.py) gets a 4xx with a one-line reason, and the server
goes on serving. server/guard.py limits the body's size, checks Host and Origin, and adds security headers.
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
from data.images import ImageError, ImageTooLarge, input_side, load_image, view_geometry
from data.regions import RegionError, fit_box, parse_box
from model.sampling import DecodingOptions, DecodingTimeout
from server.guard import FORM_OVERHEAD, BodyTooLarge, Guard, UploadLimit
from server.limits import Busy, Lanes, ServerLimits

STATIC = Path(__file__).parent / "static"


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


class CaptionService:
    """The model every request shares, and what keeps one request from taking it over: the limits, the two
    lanes (small requests never wait behind a large one) and the bound on images decoded at once."""

    def __init__(self, captioner, limits, name):
        self.captioner, self.limits, self.name = captioner, limits, name
        self.lanes = Lanes(limits)
        self.image_decodes = threading.BoundedSemaphore(limits.image_decodes)  # full-size pictures in memory at once
        self.side = input_side(captioner.preprocess)  # the model sees side x side pixels
        self.info = self.describe()  # the same for every request: read once (field_comments parses source)

    def describe(self):
        """What /api/model answers: the model's shape, the limits, the decoding options with their meaning."""
        model, decoder, limits = self.captioner.model, self.captioner.model.decoder.config, self.limits
        comments = field_comments(DecodingOptions)
        return {
            "name": self.name,
            "grid": model.encoder.config.grid,
            "layers": decoder.layers,
            "heads": decoder.heads,
            "cross_attention": decoder.cross_attention,
            "max_bytes": limits.max_bytes,
            "limits": {"num": limits.max_num, "beam": limits.max_beam, "max_len": limits.max_len,
                       "seconds": limits.seconds},
            "options": [{"name": f.name, "type": f.type.__name__, "default": f.default, "help": comments[f.name]}
                        for f in dataclasses.fields(DecodingOptions)],
        }

    def caption_bytes(self, data, filename, options, region, attention):
        """Decode the upload (bounded), caption it in its lane, and answer as the page reads it."""
        with self.image_decodes:
            image = load_image(io.BytesIO(data), self.limits.max_pixels, name=filename, seen_at=self.side)
        image.filename = filename  # named in region messages
        W, H = image.original_size  # the region, and the page, count the upload's own pixels
        if region is not None:  # checked against the upload's size, then scaled to the reduced picture's
            x0, y0, x1, y1 = fit_box(region, W, H, filename)
            region = (x0 * image.width / W, y0 * image.height / H, x1 * image.width / W, y1 * image.height / H)
        with self.lanes.turn(options):
            started = time.perf_counter()
            result = self.captioner.caption(image, options=options, region=region, attention=True,
                                            max_time=self.limits.seconds)
        S, sx, sy, ox, oy = view_geometry(self.captioner.preprocess, W, H)
        grid = self.captioner.model.encoder.config.grid
        return {
            "captions": result.texts,
            "words": result.words,
            "width": W,
            "height": H,
            "view_box": [ox / sx, oy / sy, (S + ox) / sx, (S + oy) / sy],  # the part of the image the model sees
            "grid": grid,
            "attention": nested(result.cross_attention) if attention else None,  # (layers, heads, words, grid, grid)
            "rollout": nested(result.rollout) if attention else None,  # (grid, grid)
            "region": nested(result.region.float(), 0) if result.region is not None else None,
            "seconds": round(time.perf_counter() - started, 3),
        }


def create_app(captioner, limits=ServerLimits(), name="model", host="127.0.0.1", allow_hosts=()):
    """The FastAPI app serving `captioner` within `limits`, listening on `host`. A request's Host must name
    this machine, `host` or one of `allow_hosts` (server/guard.py)."""
    app = FastAPI(title="captioner", description=__doc__, docs_url=None, redoc_url=None)
    app.add_middleware(UploadLimit, max_bytes=limits.max_bytes + FORM_OVERHEAD)
    app.add_middleware(Guard, host=host, also=allow_hosts)  # the outermost: it sees every request first
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.state.service = CaptionService(captioner, limits, name)
    app.add_api_route("/", page, include_in_schema=False)
    app.add_api_route("/docs", docs, include_in_schema=False)
    app.add_api_route("/api/model", model_info, methods=["GET"])
    app.add_api_route("/api/caption", caption, methods=["POST"], openapi_extra=caption_schema())
    return app


def page():
    return FileResponse(STATIC / "index.html")


def docs():
    return FileResponse(STATIC / "docs.html")


def model_info(request: Request):
    """The model's shape and the decoding options the page offers, each with its default and meaning."""
    return request.app.state.service.info


def caption_schema():
    """The caption endpoint's form, for /openapi.json (and so /docs): the image, the region, the maps' switch
    and every field of DecodingOptions."""
    options = {f.name: {"type": "string", "description": comment}
               for f, comment in zip(dataclasses.fields(DecodingOptions), field_comments(DecodingOptions).values())}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["image"],
        "properties": {"image": {"type": "string", "format": "binary", "description": "the image file"},
                       "region": {"type": "string", "description": "x0,y0,x1,y1 in the image's pixels"},
                       "attention": {"type": "string", "description": "\"false\" leaves the maps out"},
                       **options}}}}}}


async def caption(request: Request):
    """Caption one uploaded image; with its words' cross-attention maps and the encoder's rollout."""
    service = request.app.state.service
    filename, data, form = await read_upload(request)
    try:
        options = decoding_options(form)
        service.limits.check(options)
        region = parse_box(str(form["region"])) if form.get("region") else None
    except ValueError as e:  # an option out of range or beyond the limits, or a region that is not four numbers
        raise HTTPException(400, str(e)) from None
    attention = str(form.get("attention", "true")).lower() != "false"
    try:
        return await run_in_threadpool(service.caption_bytes, data, filename, options, region, attention)
    except ImageTooLarge as e:
        raise HTTPException(413, str(e)) from None
    except (ImageError, RegionError) as e:
        raise HTTPException(400, str(e)) from None
    except Busy as e:
        raise HTTPException(503, str(e), headers={"Retry-After": "1"}) from None
    except DecodingTimeout as e:
        raise HTTPException(503, f"{e} of {service.limits.seconds:g} s per request (serve.py --seconds); ask for "
                                 "fewer captions, a narrower beam or a shorter max_len") from None


async def read_upload(request):
    """(the file's name, its bytes, the form) of a multipart upload, or a 4xx saying what is wrong with it."""
    try:
        form = await request.form(max_files=1, max_fields=32)
    except BodyTooLarge:
        raise  # UploadLimit answers it with a 413
    except Exception as e:  # a malformed multipart body
        raise HTTPException(400, f"not a multipart/form-data upload ({str(e)[:80]})") from None
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        raise HTTPException(400, "send the image as the multipart/form-data file field 'image'")
    filename = Path(upload.filename or "upload").name[:80]  # only named in messages, never opened
    data = await upload.read()
    if not data:
        raise HTTPException(400, f"{filename}: the upload is empty")
    return filename, data, form
