# SPDX-License-Identifier: MIT
"""Python binding of libkvchain, the client library of kvchaind.

It uses only ctypes, so nothing is compiled. The library is loaded from
$KVCHAIN_LIBRARY (a path to libkvchain.so) when set, else from wherever
ctypes.util.find_library("kvchain") finds it.

    import kvchain
    with kvchain.connect() as conn:
        p_a = conn.prompt_text("Summarise the passage.")
        p_b = conn.prompt_text("Answer the question.")
        chain = conn.chain_create([p_a, p_b])
        with conn.segment_create(chain) as seg:
            seg.append_text("What colour is the sky?", shared=True)
            text, result = seg.generate_text(stage=0, max_tokens=32)

Generated text is decoded as UTF-8 with "surrogateescape", so bytes that
are not UTF-8 survive: text.encode("utf-8", "surrogateescape") returns
them, and append_text encodes a str the same way.

Every failed call raises a KvchainError subclass carrying the library's
negative error code (.code), its name (.name) and the message of the
daemon or library (.message).

Thread safety is the library's: one Connection may be shared by threads,
because libkvchain serialises the calls on one connection. A generation
iterator runs its call on a helper thread, so the connection is busy
until the iterator is exhausted or closed.
"""

import ctypes
import ctypes.util
import os
import queue
import threading
from collections import namedtuple

__all__ = [
    "connect", "Connection", "Handle", "Segment", "Generation",
    "ServerInfo", "GenResult", "Stats",
    "SHARED_INPUT", "STAGE_INPUT",
    "KvchainError", "InvalidArgumentError", "ResourceError",
    "TransportError", "NotFoundError", "HandleError", "AccessError",
    "QuotaError", "ContextError", "DimensionError", "CanceledError",
]

# ---- Errors ---------------------------------------------------------------


class KvchainError(Exception):
    """A libkvchain call failed; .code is the negative KVC_E* code."""

    def __init__(self, code, name, message):
        self.code = code
        self.name = name
        self.message = message
        super().__init__(f"{name}: {message}" if message else name)


class InvalidArgumentError(KvchainError):
    """KVC_EINVAL: an argument was invalid."""


class ResourceError(KvchainError):
    """KVC_ENOMEM or KVC_ENOSPC: out of memory, or the KV arena is full."""


class TransportError(KvchainError):
    """KVC_EIO, KVC_EPROTO, KVC_EVERSION, KVC_ETOOBIG or KVC_ETIMEDOUT:
    the connection failed, a message broke the protocol or its size limit,
    or the daemon did not answer in time."""


class NotFoundError(KvchainError):
    """KVC_ENOENT: no such prompt, chain, span or adapter file."""


class HandleError(KvchainError):
    """KVC_EUNKNOWN_HANDLE, KVC_ERELEASED or KVC_EEXPIRED: the segment
    handle is unknown, was released by every holder, or expired."""


class AccessError(KvchainError):
    """KVC_EPERM: the daemon does not allow this peer."""


class QuotaError(KvchainError):
    """KVC_EQUOTA: a per-user limit of the daemon was reached."""


class ContextError(KvchainError):
    """KVC_ECONTEXT: the segment would exceed its context length."""


class DimensionError(KvchainError):
    """KVC_EDIM: a prompt's width differs from the model's d_model."""


class CanceledError(KvchainError):
    """KVC_ECANCELED: the token callback stopped the generation."""


_CODES = {
    -1: ("KVC_EINVAL", InvalidArgumentError),
    -2: ("KVC_ENOMEM", ResourceError),
    -3: ("KVC_EIO", TransportError),
    -4: ("KVC_EPROTO", TransportError),
    -5: ("KVC_ENOENT", NotFoundError),
    -6: ("KVC_EUNKNOWN_HANDLE", HandleError),
    -7: ("KVC_ERELEASED", HandleError),
    -8: ("KVC_EEXPIRED", HandleError),
    -9: ("KVC_EPERM", AccessError),
    -10: ("KVC_EQUOTA", QuotaError),
    -11: ("KVC_ECONTEXT", ContextError),
    -12: ("KVC_ENOSPC", ResourceError),
    -13: ("KVC_EDIM", DimensionError),
    -14: ("KVC_EVERSION", TransportError),
    -15: ("KVC_ETOOBIG", TransportError),
    -16: ("KVC_ETIMEDOUT", TransportError),
    -17: ("KVC_ECANCELED", CanceledError),
}


def _error(code, message):
    name, cls = _CODES.get(code, (f"KVC error {code}", KvchainError))
    return cls(code, name, message)


# ---- The C interface ------------------------------------------------------

SHARED_INPUT = 2    # enum kvc_span_kind: seen by every stage, no prompt
STAGE_INPUT = 3     # enum kvc_span_kind: input of one stage

HANDLE_STRLEN = 32
_STOP_REASONS = {0: "max_tokens", 1: "eos", 2: "stop_token", 3: "stop_string",
                 4: "canceled", 5: "context"}


class _Handle(ctypes.Structure):
    _fields_ = [("bytes", ctypes.c_uint8 * 16)]


class _ServerInfo(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32),
                ("protocol_version", ctypes.c_uint32),
                ("d_model", ctypes.c_uint32),
                ("n_vocab", ctypes.c_uint32),
                ("n_ctx", ctypes.c_uint32),
                ("model_name", ctypes.c_char * 64)]


class _GenParams(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32),
                ("temperature", ctypes.c_float),
                ("top_k", ctypes.c_uint32),
                ("top_p", ctypes.c_float),
                ("min_p", ctypes.c_float),
                ("seed", ctypes.c_uint64),
                ("max_tokens", ctypes.c_uint32),
                ("ignore_eos", ctypes.c_int),
                ("stop", ctypes.POINTER(ctypes.c_char_p)),
                ("n_stop", ctypes.c_uint32),
                ("stop_tokens", ctypes.POINTER(ctypes.c_int32)),
                ("n_stop_tokens", ctypes.c_uint32),
                ("view", ctypes.POINTER(ctypes.c_uint32)),
                ("n_view", ctypes.c_uint32)]


class _GenResult(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32),
                ("span_id", ctypes.c_uint32),
                ("n_generated", ctypes.c_uint32),
                ("stop_reason", ctypes.c_uint32),
                ("prefill_seconds", ctypes.c_double),
                ("decode_seconds", ctypes.c_double)]


class _Stats(ctypes.Structure):
    _fields_ = [("struct_size", ctypes.c_uint32),
                ("blocks_total", ctypes.c_uint32),
                ("blocks_free", ctypes.c_uint32),
                ("block_bytes", ctypes.c_uint64),
                ("segments", ctypes.c_uint32),
                ("chains", ctypes.c_uint32),
                ("prompts", ctypes.c_uint32),
                ("connections", ctypes.c_uint32),
                ("tokens_generated", ctypes.c_uint64)]


_TOKEN_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int32,
                             ctypes.POINTER(ctypes.c_char), ctypes.c_size_t)

_P = ctypes.POINTER
_SIGNATURES = {
    "kvc_strerror": (ctypes.c_char_p, [ctypes.c_int]),
    "kvc_connect": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_char_p,
                                   _P(ctypes.c_void_p)]),
    "kvc_disconnect": (None, [ctypes.c_void_p]),
    "kvc_last_error": (ctypes.c_char_p, [ctypes.c_void_p]),
    "kvc_server_info": (ctypes.c_int, [ctypes.c_void_p, _P(_ServerInfo)]),
    "kvc_prompt_soft": (ctypes.c_int, [ctypes.c_void_p, _P(ctypes.c_float),
                                       ctypes.c_uint32, ctypes.c_uint32,
                                       _P(ctypes.c_uint64)]),
    "kvc_prompt_text": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p,
                                       _P(ctypes.c_uint64)]),
    "kvc_prompt_peft": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p,
                                       _P(ctypes.c_uint64), ctypes.c_uint32,
                                       _P(ctypes.c_uint32)]),
    "kvc_chain_create": (ctypes.c_int, [ctypes.c_void_p, _P(ctypes.c_uint64),
                                        ctypes.c_uint32, _P(ctypes.c_uint64)]),
    "kvc_handle_format": (None, [_P(_Handle), ctypes.c_char_p]),
    "kvc_handle_parse": (ctypes.c_int, [ctypes.c_char_p, _P(_Handle)]),
    "kvc_segment_create": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_uint64,
                                          _P(_Handle)]),
    "kvc_attach": (ctypes.c_int, [ctypes.c_void_p, _P(_Handle)]),
    "kvc_release": (ctypes.c_int, [ctypes.c_void_p, _P(_Handle)]),
    "kvc_fork": (ctypes.c_int, [ctypes.c_void_p, _P(_Handle), _P(_Handle)]),
    "kvc_append_text": (ctypes.c_int, [ctypes.c_void_p, _P(_Handle),
                                       ctypes.c_int, ctypes.c_uint32,
                                       ctypes.c_char_p, ctypes.c_size_t,
                                       _P(ctypes.c_uint32), ctypes.c_uint32,
                                       _P(ctypes.c_uint32)]),
    "kvc_append_tokens": (ctypes.c_int, [ctypes.c_void_p, _P(_Handle),
                                         ctypes.c_int, ctypes.c_uint32,
                                         _P(ctypes.c_int32), ctypes.c_uint32,
                                         _P(ctypes.c_uint32), ctypes.c_uint32,
                                         _P(ctypes.c_uint32)]),
    "kvc_gen_params_init": (None, [_P(_GenParams)]),
    "kvc_generate": (ctypes.c_int, [ctypes.c_void_p, _P(_Handle),
                                    ctypes.c_uint32, _P(_GenParams),
                                    _TOKEN_FN, ctypes.c_void_p,
                                    _P(_GenResult)]),
    "kvc_generate_text": (ctypes.c_int, [ctypes.c_void_p, _P(_Handle),
                                         ctypes.c_uint32, _P(_GenParams),
                                         _P(ctypes.c_void_p),
                                         _P(ctypes.c_size_t),
                                         _P(_GenResult)]),
    "kvc_drop_span": (ctypes.c_int, [ctypes.c_void_p, _P(_Handle),
                                     ctypes.c_uint32]),
    "kvc_stats": (ctypes.c_int, [ctypes.c_void_p, _P(_Stats)]),
    "kvc_free": (None, [ctypes.c_void_p]),
}

_lib = None
_lib_lock = threading.Lock()


def _load():
    """Load libkvchain once and declare every function's signature."""
    global _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        path = os.environ.get("KVCHAIN_LIBRARY") or \
            ctypes.util.find_library("kvchain")
        if not path:
            raise OSError("libkvchain not found: install it, or set "
                          "KVCHAIN_LIBRARY to the path of libkvchain.so")
        lib = ctypes.CDLL(path)
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.restype = restype
            fn.argtypes = argtypes
        _lib = lib
        return lib


def strerror(code):
    """Return the library's short description of a KVC_E* code."""
    return _load().kvc_strerror(code).decode()


def _u32_array(values):
    if values is None:
        return None, 0
    values = list(values)
    return (ctypes.c_uint32 * max(len(values), 1))(*values), len(values)


# ---- Values ---------------------------------------------------------------

ServerInfo = namedtuple("ServerInfo", "protocol_version d_model n_vocab "
                        "n_ctx model_name")
GenResult = namedtuple("GenResult", "span_id n_generated stop_reason "
                       "prefill_seconds decode_seconds")
Stats = namedtuple("Stats", "blocks_total blocks_free block_bytes segments "
                   "chains prompts connections tokens_generated")


def _gen_result(r):
    return GenResult(r.span_id, r.n_generated,
                     _STOP_REASONS.get(r.stop_reason, str(r.stop_reason)),
                     r.prefill_seconds, r.decode_seconds)


class Handle:
    """A segment's handle: a 128-bit capability, printed as 32 hex digits."""

    __slots__ = ("_c",)

    def __init__(self, raw=None):
        self._c = _Handle()
        if raw is not None:
            if len(raw) != 16:
                raise ValueError("a handle is 16 bytes")
            self._c.bytes[:] = list(raw)

    @classmethod
    def parse(cls, text):
        """Parse 32 hex digits; raises InvalidArgumentError otherwise."""
        h = cls()
        rc = _load().kvc_handle_parse(text.encode(), ctypes.byref(h._c))
        if rc < 0:
            raise _error(rc, f"invalid handle {text!r} (expected 32 hex "
                             "digits)")
        return h

    def __str__(self):
        buf = ctypes.create_string_buffer(HANDLE_STRLEN + 1)
        _load().kvc_handle_format(ctypes.byref(self._c), buf)
        return buf.value.decode()

    def __repr__(self):
        return f"Handle({str(self)!r})"

    def __eq__(self, other):
        return isinstance(other, Handle) and \
            bytes(self._c.bytes) == bytes(other._c.bytes)

    def __hash__(self):
        return hash(bytes(self._c.bytes))


# ---- Connection -----------------------------------------------------------


def connect(path=None, client_name=None):
    """Connect to kvchaind; see Connection."""
    return Connection(path, client_name)


class Connection:
    """A connection to kvchaind.

    path: the control socket, or None for $KVCHAIN_SOCKET, else
    $XDG_RUNTIME_DIR/kvchain/kvchaind.sock for users other than root,
    else /run/kvchain/kvchaind.sock. client_name appears in the daemon's
    log. Closing the connection releases every segment it holds.
    """

    def __init__(self, path=None, client_name=None):
        self._lib = _load()
        self._conn = ctypes.c_void_p()
        rc = self._lib.kvc_connect(
            path.encode() if path else None,
            client_name.encode() if client_name else None,
            ctypes.byref(self._conn))
        if rc < 0:
            raise _error(rc, f"cannot connect to "
                             f"{path or 'the default socket'}")

    def _check(self, rc):
        if rc < 0:
            raise _error(rc, self._lib.kvc_last_error(self._conn).decode(
                errors="replace"))
        return rc

    def _live(self):
        if not self._conn:
            raise _error(-1, "the connection is closed")
        return self._conn

    def close(self):
        """Disconnect; the daemon releases every segment held here."""
        if self._conn:
            self._lib.kvc_disconnect(self._conn)
            self._conn = ctypes.c_void_p()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        # A half-built Connection has no _conn; the library may be gone
        # already at interpreter exit.
        if getattr(self, "_conn", None) and getattr(self, "_lib", None):
            self.close()

    def last_error(self):
        """Return the message of the last failed call ('' if none)."""
        return self._lib.kvc_last_error(self._live()).decode(errors="replace")

    def server_info(self):
        """Return the model and limits the daemon serves."""
        info = _ServerInfo(struct_size=ctypes.sizeof(_ServerInfo))
        self._check(self._lib.kvc_server_info(self._live(),
                                              ctypes.byref(info)))
        return ServerInfo(info.protocol_version, info.d_model, info.n_vocab,
                          info.n_ctx, info.model_name.decode(errors="replace"))

    # -- prompts and chains

    def prompt_soft(self, embeddings, d_model=None):
        """Register a soft prompt; return its id.

        embeddings: a list of rows of floats (each row d_model wide), or a
        flat list of floats or bytes of native float32 values, which are
        cut into rows of d_model (default: the model's d_model).
        """
        if isinstance(embeddings, (bytes, bytearray, memoryview)):
            raw = bytes(embeddings)
            if len(raw) % 4:
                raise _error(-1, "soft prompt bytes are not whole float32 "
                                 "values")
            values = memoryview(raw).cast("f").tolist()
        else:
            values = list(embeddings)
            if values and isinstance(values[0], (list, tuple)):
                if d_model is None:
                    d_model = len(values[0])
                if any(len(row) != d_model for row in values):
                    raise _error(-1, "soft prompt rows differ in width")
                values = [x for row in values for x in row]
        if d_model is None:
            d_model = self.server_info().d_model
        if not values or len(values) % d_model:
            raise _error(-1, f"{len(values)} values are not whole rows of "
                             f"{d_model}")
        array = (ctypes.c_float * len(values))(*values)
        prompt_id = ctypes.c_uint64()
        self._check(self._lib.kvc_prompt_soft(self._live(), array,
                                              len(values) // d_model,
                                              d_model,
                                              ctypes.byref(prompt_id)))
        return prompt_id.value

    def prompt_text(self, text):
        """Register a hard prompt (text the daemon tokenizes); return its
        id."""
        prompt_id = ctypes.c_uint64()
        self._check(self._lib.kvc_prompt_text(self._live(), text.encode(),
                                              ctypes.byref(prompt_id)))
        return prompt_id.value

    def prompt_peft(self, directory, cap=64):
        """Register the PEFT prompt-tuning adapter in a folder; return the
        list of prompt ids, one per stage it holds."""
        ids = (ctypes.c_uint64 * cap)()
        n = ctypes.c_uint32()
        self._check(self._lib.kvc_prompt_peft(self._live(),
                                              os.fsencode(directory), ids,
                                              cap, ctypes.byref(n)))
        return list(ids[:n.value])

    def chain_create(self, prompt_ids):
        """Create a chain of prompts in stage order; return its id."""
        ids = list(prompt_ids)
        array = (ctypes.c_uint64 * max(len(ids), 1))(*ids)
        chain_id = ctypes.c_uint64()
        self._check(self._lib.kvc_chain_create(self._live(), array, len(ids),
                                               ctypes.byref(chain_id)))
        return chain_id.value

    # -- segments

    def segment_create(self, chain_id):
        """Create a segment of a chain, held by this connection."""
        h = Handle()
        self._check(self._lib.kvc_segment_create(self._live(), chain_id,
                                                 ctypes.byref(h._c)))
        return Segment(self, h)

    def attach(self, handle):
        """Hold an existing segment by its handle (a Handle or its text)."""
        if not isinstance(handle, Handle):
            handle = Handle.parse(handle)
        self._check(self._lib.kvc_attach(self._live(),
                                         ctypes.byref(handle._c)))
        return Segment(self, handle)

    def stats(self):
        """Return the daemon's statistics."""
        st = _Stats(struct_size=ctypes.sizeof(_Stats))
        self._check(self._lib.kvc_stats(self._live(), ctypes.byref(st)))
        return Stats(st.blocks_total, st.blocks_free, st.block_bytes,
                     st.segments, st.chains, st.prompts, st.connections,
                     st.tokens_generated)


def _gen_params(max_tokens=128, temperature=0.0, top_k=0, top_p=1.0,
                min_p=0.0, seed=0, ignore_eos=False, stop=None,
                stop_tokens=None, view=None):
    """Build struct kvc_gen_params and the arrays it points into."""
    p = _GenParams()
    _load().kvc_gen_params_init(ctypes.byref(p))
    p.max_tokens = max_tokens
    p.temperature = temperature
    p.top_k = top_k
    p.top_p = top_p
    p.min_p = min_p
    p.seed = seed
    p.ignore_eos = 1 if ignore_eos else 0
    keep = []
    if stop:
        strings = (ctypes.c_char_p * len(stop))(*[s.encode() for s in stop])
        keep.append(strings)
        p.stop = strings
        p.n_stop = len(stop)
    if stop_tokens:
        ids = (ctypes.c_int32 * len(stop_tokens))(*stop_tokens)
        keep.append(ids)
        p.stop_tokens = ids
        p.n_stop_tokens = len(stop_tokens)
    if view is not None:
        array, n = _u32_array(view)
        keep.append(array)
        p.view = array
        p.n_view = n
    return p, keep


class Segment:
    """A KV cache segment this connection holds.

    Used as a context manager it releases the hold on exit; the segment
    then lives for the daemon's TTL unless another connection holds it.
    """

    def __init__(self, conn, handle):
        self.conn = conn
        self.handle = handle
        self.held = True

    def __repr__(self):
        return f"Segment({str(self.handle)!r})"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.held and self.conn._conn:
            self.release()

    def _call(self, fn, *args):
        return self.conn._check(fn(self.conn._live(),
                                   ctypes.byref(self.handle._c), *args))

    def release(self):
        """Drop this connection's hold on the segment."""
        self._call(self.conn._lib.kvc_release)
        self.held = False

    def fork(self):
        """Create a segment sharing every span; this connection holds it."""
        out = Handle()
        self._call(self.conn._lib.kvc_fork, ctypes.byref(out._c))
        return Segment(self.conn, out)

    def append_text(self, text, stage=0, shared=False, view=None):
        """Append text (framed as text + newline) as shared input, or as
        input of a stage; view lists the span ids it may read (None: the
        cascade mask's default). Return the new span's id."""
        data = text.encode("utf-8", "surrogateescape") \
            if isinstance(text, str) else bytes(text)
        kind = SHARED_INPUT if shared else STAGE_INPUT
        array, n_view = _u32_array(view)
        span = ctypes.c_uint32()
        self._call(self.conn._lib.kvc_append_text, kind,
                   0 if shared else stage, data, len(data), array, n_view,
                   ctypes.byref(span))
        return span.value

    def append_tokens(self, tokens, stage=0, shared=False, view=None):
        """Append token ids; otherwise as append_text."""
        ids = list(tokens)
        array = (ctypes.c_int32 * max(len(ids), 1))(*ids)
        kind = SHARED_INPUT if shared else STAGE_INPUT
        view_array, n_view = _u32_array(view)
        span = ctypes.c_uint32()
        self._call(self.conn._lib.kvc_append_tokens, kind,
                   0 if shared else stage, array, len(ids), view_array,
                   n_view, ctypes.byref(span))
        return span.value

    def drop(self, span_id):
        """Drop a span; its KV is freed once no other segment shares it."""
        self._call(self.conn._lib.kvc_drop_span, span_id)

    def generate(self, stage, **params):
        """Generate as a stage; return a Generation, an iterable of
        (token id, text) pairs. Parameters: max_tokens, temperature, top_k,
        top_p, min_p, seed, ignore_eos, stop, stop_tokens, view."""
        return Generation(self, stage, params)

    def generate_blocking(self, stage, on_token=None, **params):
        """Generate as a stage and wait. on_token(id, text) is called for
        each token; a true return stops generation with CanceledError.
        Return (text, GenResult)."""
        pieces = []
        error = []

        def callback(_arg, token_id, text, length):
            try:
                piece = ctypes.string_at(text, length)
                pieces.append(piece)
                if on_token is not None and on_token(
                        token_id, piece.decode("utf-8", "surrogateescape")):
                    return 1
                return 0
            except Exception as e:  # raised again after the call returns
                error.append(e)
                return 1

        p, keep = _gen_params(**params)
        result = _GenResult(struct_size=ctypes.sizeof(_GenResult))
        rc = self.conn._lib.kvc_generate(
            self.conn._live(), ctypes.byref(self.handle._c), stage,
            ctypes.byref(p), _TOKEN_FN(callback), None,
            ctypes.byref(result))
        del keep
        if error:
            raise error[0]
        self.conn._check(rc)
        return b"".join(pieces).decode("utf-8", "surrogateescape"), _gen_result(result)

    def generate_text(self, stage, **params):
        """Generate as a stage and return (text, GenResult), through
        kvc_generate_text."""
        p, keep = _gen_params(**params)
        text = ctypes.c_void_p()
        length = ctypes.c_size_t()
        result = _GenResult(struct_size=ctypes.sizeof(_GenResult))
        self._call(self.conn._lib.kvc_generate_text, stage, ctypes.byref(p),
                   ctypes.byref(text), ctypes.byref(length),
                   ctypes.byref(result))
        del keep
        try:
            data = ctypes.string_at(text, length.value) if text else b""
        finally:
            self.conn._lib.kvc_free(text)
        return data.decode("utf-8", "surrogateescape"), _gen_result(result)


_DONE = object()


class Generation:
    """An iterable of (token id, text) pairs from one generation.

    The call runs on a helper thread and streams tokens through a queue.
    Closing the iterator early (or leaving a for loop with break) cancels
    the generation. After the last pair, .result holds the GenResult; a
    failed generation raises its KvchainError from the iteration.
    """

    def __init__(self, segment, stage, params):
        self.result = None
        self._queue = queue.Queue()
        self._cancel = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._run,
                                        args=(segment, stage, params),
                                        daemon=True)
        self._thread.start()

    def _run(self, segment, stage, params):
        def on_token(token_id, text):
            self._queue.put((token_id, text))
            return self._cancel.is_set()

        try:
            _, result = segment.generate_blocking(stage, on_token, **params)
            self._queue.put((_DONE, result))
        except CanceledError as e:
            self._queue.put((_DONE, e if not self._cancel.is_set() else None))
        except BaseException as e:  # handed to the iterating thread
            self._queue.put((_DONE, e))

    def __iter__(self):
        try:
            while not self._finished:
                first, second = self._queue.get()
                if first is not _DONE:
                    yield first, second
                    continue
                self._finished = True
                self._thread.join()
                if isinstance(second, BaseException):
                    raise second
                self.result = second
        finally:
            # reached early when the loop broke off or the caller closed
            # the iterator: cancel what still runs
            self.close()

    def close(self):
        """Cancel the generation if it still runs, and wait for it."""
        if self._finished:
            return
        self._cancel.set()
        while not self._finished:
            first, _ = self._queue.get()
            if first is _DONE:
                self._finished = True
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if not getattr(self, "_finished", True):
            self.close()

    def text(self):
        """Consume the rest and return its text."""
        return "".join(text for _, text in self)
