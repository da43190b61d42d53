"""The plain REST endpoint for people and scripts: `POST /v1/scan` with a raw image body or a
multipart/form-data upload of one or more files; the answer is a JSON list of rows exactly like
`clipscan scan`'s JSONL rows (path = the uploaded file name).

Status codes: a request that is not an upload (wrong content type 415, a malformed or file-less multipart
body 400, too many images or bytes 413) has no rows. Otherwise every image gets its row, and an image that
cannot be scanned (empty, truncated, not an image, too many pixels) is an error in its own row: 200 when at
least one image was scanned, 422 with all the rows when none was."""
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
        shown = f"Content-Type {ctype!r} is" if ctype else "a request without a Content-Type is"
        raise HTTPError(415, f"{shown} not an image upload; send the image as the body with an image/* "
                             "Content-Type (curl --data-binary @photo.jpg -H 'Content-Type: image/jpeg') or as "
                             "multipart/form-data (curl -F file=@photo.jpg)")
    if len(items) > lim.max_images:
        raise HTTPError(413, f"{len(items)} images in one request; the limit is {lim.max_images}")
    results = await state.scan(items)
    rows = _rows(results, state.scanner.manifest, request.query_params.get("embedding") in ("1", "true", "yes"))
    # One rule for every image's own error (empty, truncated, not an image, too large): it is that image's
    # row. 200 when at least one image was scanned; 422, with the rows, when none could be.
    if all(r.error for r in results):
        raise HTTPError(422, f"{'the image' if len(results) == 1 else 'no image'} could not be scanned: "
                             f"{results[0].error}", rows=rows)
    return JSONResponse(rows)
