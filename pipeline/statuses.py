"""The closed set of states an input record can end in, shared by every stage's manifest, and
`RecordError`, how a record that cannot be used says which state it ends in.

Each input record gets exactly one of these in `manifest.jsonl`; `summary.json` counts them and
the counts add up to the number of input records.
"""


class RecordError(Exception):
    """One input record cannot be used: `status` (one of this module's) is what the manifest
    records for it, `reason` says why, for a person. Not a user error: the run goes on."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


# Produced a training sample.
KEPT = "kept"
# Listed in --exclude (e.g. a duplicate found by `pipeline dedup`).
EXCLUDED = "excluded"
# The source could not hand over the bytes (permission denied, file vanished, I/O error, not a
# regular file, a folder that could not be listed).
UNREADABLE = "unreadable"
# Decoder rejections (pipeline.decode).
EMPTY = "empty"  # zero-byte file
NOT_IMAGE = "not_image"  # HTML, text, or an unknown format
CORRUPT = "corrupt"  # truncated or damaged data
TOO_LARGE = "too_large"  # over --max-bytes (unread), or a header over the pixel limit (bomb guard)
TOO_SMALL = "too_small"  # shorter side below what the stage needs
# Faces stage.
FACES = "faces"  # one or more faces kept (the manifest line holds the count)
NO_FACE = "no_face"
FACES_TOO_SMALL = "faces_too_small"  # faces found, all below --min-size
# Dedup stage.
UNIQUE = "unique"
DUPLICATE = "duplicate"
# Download stage (pipeline.download); NOT_IMAGE and TOO_LARGE above apply there too.
OK = "ok"
HTTP_ERROR = "http_error"  # the manifest line holds the code
TIMEOUT = "timeout"
CONNECTION_ERROR = "connection_error"
REDIRECT_LOOP = "redirect_loop"
BAD_URL = "bad_url"
OPTED_OUT = "opted_out"
DUPLICATE_URL = "duplicate_url"

DECODER_REJECTIONS = (EMPTY, NOT_IMAGE, CORRUPT, TOO_LARGE, TOO_SMALL)

DESCRIPTIONS = {
    KEPT: "written to the shards",
    EXCLUDED: "key listed in --exclude",
    UNREADABLE: "source could not read the bytes (vanished, not a regular file, folder not "
                "listed, I/O error)",
    EMPTY: "zero-byte file",
    NOT_IMAGE: "not an image (HTML, text, unknown format)",
    CORRUPT: "truncated or damaged image data",
    TOO_LARGE: "file or download over --max-bytes, or header over the pixel limit (decompression "
                "bomb guard)",
    TOO_SMALL: "smaller than the requested size",
    FACES: "at least one face kept",
    NO_FACE: "no face detected",
    FACES_TOO_SMALL: "faces detected, all below --min-size",
    UNIQUE: "no duplicate, or the member kept from its group",
    DUPLICATE: "near duplicate of a kept image (listed in duplicates.txt)",
    OK: "downloaded: the original bytes are in the shards",
    HTTP_ERROR: "the server answered with an HTTP error (the code is in the manifest), after "
                "the retries for 429 and 5xx",
    TIMEOUT: "no connection, no data, or no complete answer within the --*-timeout limits",
    CONNECTION_ERROR: "connection refused or reset, name not resolved, or a body cut short of "
                      "its Content-Length, after the retries",
    REDIRECT_LOOP: "redirects came back to a URL already visited, or went past the redirect "
                   "limit",
    BAD_URL: "not an http(s) URL, unparsable, or an empty or malformed list row",
    OPTED_OUT: "the site opted out of AI use (X-Robots-Tag noai or noimageai); fetched only "
               "with --ignore-opt-out",
    DUPLICATE_URL: "the same URL appeared earlier in the list (fetched once)",
}
