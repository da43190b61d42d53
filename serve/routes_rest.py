"""The plain REST endpoint for people and scripts: `POST /v1/scan` with a raw image body or a
multipart/form-data upload of one or more files; the answer is a JSON list of rows exactly like
`clipscan scan`'s JSONL rows (path = the uploaded file name)."""
from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse

from clipscan.runtime.results import columns_for

from .errors import HTTPError

CONTENT_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff",
                 "application/octet-stream")


def _name(request: Request) -> str:
    return request.query_params.get("name") or request.headers.get("x-filename") or "upload"


async def _multipart(request: Request, lim) -> list[tuple[str, bytes]]:
    try:
        form = await request.form(max_files=lim.max_images, max_fields=lim.max_images)
    except HTTPError:
        raise
    except Exception as e:  # noqa: BLE001 -- starlette's MultiPartException and malformed bodies
        detail = getattr(e, "detail", None) or getattr(e, "message", None) or str(e)
        status = 413 if "Too many files" in str(detail) else 400
        raise HTTPError(status, f"the multipart/form-data body cannot be read: {detail}") from None
    try:
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            raise HTTPError(400, "the multipart/form-data body has no file; send each image as a file field "
                                 "(curl -F file=@photo.jpg)")
        return [(f.filename or f"file{i}", await f.read()) for i, f in enumerate(files)]
    finally:
        await form.close()


def _rows(results, manifest, with_embedding: bool) -> list[dict]:
    cols = columns_for(manifest)
    return [r.to_row(columns=cols, with_embedding=with_embedding) for r in results]


async def scan(request: Request):
    state = request.app.state.service
    lim = state.limits
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        items = await _multipart(request, lim)
    elif ctype in CONTENT_TYPES or ctype.startswith("image/"):
        body = await request.body()
        items = [(_name(request), body)]
    else:
        shown = repr(ctype) if ctype else "no content type"
        raise HTTPError(415, f"{shown} is not an image upload; send the image as the body with an image/* "
                             "Content-Type (curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg') or as "
                             "multipart/form-data (curl -F file=@photo.jpg)")
    empty = [n for n, data in items if not data]
    if len(items) == 1 and empty:
        raise HTTPError(400, "the upload is empty (0 bytes)")
    if len(items) > lim.max_images:
        raise HTTPError(413, f"{len(items)} images in one request; the limit is {lim.max_images}")
    results = await state.scan(items)
    rows = _rows(results, state.scanner.manifest, request.query_params.get("embedding") in ("1", "true", "yes"))
    if all(r.error for r in results):
        raise HTTPError(422, f"{'the image' if len(results) == 1 else 'no image'} could not be scanned: "
                             f"{results[0].error}", rows=rows)
    return JSONResponse(rows)
