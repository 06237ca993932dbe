/*
 * framebroker._fastring: the ring's seqlock read and a blocking read's first
 * wait, compiled (proto/doc/decisions.md, "A compiled read path for Python").
 *
 * The pure-Python read path in _ring.py is the reference and stays: it runs
 * where this module is not built (no C compiler at install, Windows) and with
 * FRAMEBROKER_READ_PATH=python. Both implement the same protocol and the ring
 * tests run on both. This file knows no offsets of its own: _ring.py passes
 * every offset from _layout.py when it opens a ring, and they are checked here
 * against the mapping's length before anything is read.
 *
 * Linux only (the wait is a futex on the wake word); on other systems the
 * build fails on purpose and the package installs without it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#ifndef __linux__
#error "framebroker._fastring needs Linux (futex); the pure-Python read path is used elsewhere"
#endif

#include <errno.h>
#include <linux/futex.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* The slot header fields, in the order _ring.py passes their offsets. */
enum { F_SEQ, F_NUMBER, F_WALL, F_MONO, F_LEN, F_CHECKSUM, F_PTS, F_STREAM, N_FIELDS };

typedef struct {
    PyObject_HEAD
    /* A buffer export on the segment's mapping, held for this object's life:
     * while it exists the mmap refuses to close, so `base` stays mapped even
     * when another thread closes the ring during a read (Ring.close drops its
     * reference and leaves the unmapping to the last export, as for views). */
    Py_buffer seg;
    int have_seg;
    const char *base;
    Py_ssize_t slots, frame_bytes, retries;
    Py_ssize_t *header; /* byte offset of each slot's header */
    Py_ssize_t *payload; /* byte offset of each slot's payload */
    Py_ssize_t wake, last, state;
    Py_ssize_t field[N_FIELDS]; /* byte offsets inside a slot header */
    uint64_t final_states; /* bit s set: state s is final (s < 64) */
    /* Copies thrown away because the writer overwrote the slot meanwhile
     * (read-only `lapped`: how often this reader was lapped; tests use it to
     * show the retry ran). Written only by the thread that reads. */
    unsigned long long lapped;
} Slots;

/* -- loads
 *
 * Memory ordering (proto/doc/decisions.md, "Seqlock reads from Python", whose
 * fences (1) and (2) these are): the writer stores a slot's sequence odd, then
 * the payload and metadata, then the sequence even with Release, then
 * `last_frame` with Release. The reader's Acquire loads of `last_frame` and of
 * the first sequence keep every later load (frame number, payload, metadata)
 * after them; the Acquire fence after the copy keeps the payload's and the
 * metadata's loads before the second sequence load, so an unchanged even
 * sequence means none of them saw a write of the next frame. The payload is
 * copied with memcpy, racing with a writer that may be overwriting it: the
 * sequence check throws such a copy away, which is how every seqlock reader
 * works (the Rust client's too). The wake word is loaded with Acquire before
 * the look, so a frame published after the look has changed it and the futex
 * wait returns at once. */
static inline uint64_t acquire64(const char *p) { return __atomic_load_n((const uint64_t *)p, __ATOMIC_ACQUIRE); }
static inline uint64_t relaxed64(const char *p) { return __atomic_load_n((const uint64_t *)p, __ATOMIC_RELAXED); }
static inline uint32_t acquire32(const char *p) { return __atomic_load_n((const uint32_t *)p, __ATOMIC_ACQUIRE); }
static inline uint32_t relaxed32(const char *p) { return __atomic_load_n((const uint32_t *)p, __ATOMIC_RELAXED); }

typedef struct {
    uint64_t want, seq, wall, mono, len, pts, stream;
    uint32_t checksum;
    Py_ssize_t idx;
} Got;

enum { NOTHING = 0, GOT = 1, CONTENDED = -1 };

/* One look, as Ring._read does it: the frame wanted after `cursor`, copied
 * into `dst`. Runs without the GIL: it touches only the mapping and `dst`. */
static int look(Slots *s, uint64_t cursor, int sequential, char *dst, Got *g) {
    const uint64_t slots = (uint64_t)s->slots;
    for (Py_ssize_t attempt = 0; attempt < s->retries; attempt++) {
        uint64_t want = acquire64(s->base + s->last);
        if (want <= cursor)
            return NOTHING;
        /* `sequential`: the one after the cursor or, when the reader fell
         * behind, the oldest one the writer will not overwrite next. */
        if (sequential && cursor + 1 < want) {
            uint64_t oldest = want + 2 > slots ? want + 2 - slots : 0;
            want = oldest > cursor + 1 ? oldest : cursor + 1;
        }
        Py_ssize_t idx = (Py_ssize_t)(want % slots);
        const char *h = s->base + s->header[idx];
        uint64_t seq = acquire64(h + s->field[F_SEQ]);
        if ((seq & 1) || relaxed64(h + s->field[F_NUMBER]) != want)
            continue;
        memcpy(dst, s->base + s->payload[idx], (size_t)s->frame_bytes);
        g->wall = relaxed64(h + s->field[F_WALL]);
        g->mono = relaxed64(h + s->field[F_MONO]);
        g->len = relaxed64(h + s->field[F_LEN]);
        g->checksum = relaxed32(h + s->field[F_CHECKSUM]);
        g->pts = relaxed64(h + s->field[F_PTS]);
        g->stream = relaxed64(h + s->field[F_STREAM]);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (relaxed64(h + s->field[F_SEQ]) != seq) {
            s->lapped++; /* overwritten during the copy */
            continue;
        }
        g->want = want;
        g->seq = seq;
        g->idx = idx;
        return GOT;
    }
    return CONTENDED;
}

/* What a read returns to _ring.py: None (nothing new), False (the writer kept
 * overwriting the frame), or (number, slot, seq, wall, mono, len, checksum,
 * pts, stream), the raw words; _ring.py makes the FrameMeta. */
static PyObject *result(int r, const Got *g) {
    if (r == NOTHING)
        Py_RETURN_NONE;
    if (r == CONTENDED)
        Py_RETURN_FALSE;
    return Py_BuildValue("(KnKKKKkKK)", (unsigned long long)g->want, g->idx, (unsigned long long)g->seq,
                         (unsigned long long)g->wall, (unsigned long long)g->mono, (unsigned long long)g->len,
                         (unsigned long)g->checksum, (unsigned long long)g->pts, (unsigned long long)g->stream);
}

static int take_dst(const Slots *s, PyObject *obj, Py_buffer *dst) {
    if (s->base == NULL) {
        PyErr_SetString(PyExc_ValueError, "Slots is not set up");
        return -1;
    }
    if (PyObject_GetBuffer(obj, dst, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0)
        return -1;
    if (dst->len != s->frame_bytes) {
        PyErr_Format(PyExc_ValueError, "the destination holds %zd bytes, a frame %zd", dst->len, s->frame_bytes);
        PyBuffer_Release(dst);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(read_doc, "read(cursor, sequential, dst)\n--\n\n"
                       "One look, never waits: the frame wanted after ``cursor`` copied into ``dst``\n"
                       "(writable, C-contiguous, one frame's bytes). None, False or the raw words.");

static PyObject *Slots_read(Slots *self, PyObject *args) {
    unsigned long long cursor;
    int sequential;
    PyObject *obj;
    Py_buffer dst;
    Got g;
    if (!PyArg_ParseTuple(args, "KpO:read", &cursor, &sequential, &obj) || take_dst(self, obj, &dst) < 0)
        return NULL;
    int r;
    Py_BEGIN_ALLOW_THREADS
    r = look(self, cursor, sequential, dst.buf, &g);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&dst);
    return result(r, &g);
}

PyDoc_STRVAR(wait_read_doc, "wait_read(cursor, sequential, dst, slice_ns)\n--\n\n"
                            "A look; when it finds nothing and the stream is not in a final state, one\n"
                            "futex wait on the wake word of at most ``slice_ns``, then one more look.\n"
                            "Returns what read() returns; None leaves the rest (timeouts, ended\n"
                            "streams, a dead broker) to the caller. Raises OSError when the futex\n"
                            "itself fails (not for a timeout, a changed word or a signal).");

static PyObject *Slots_wait_read(Slots *self, PyObject *args) {
    unsigned long long cursor;
    long long slice_ns;
    int sequential;
    PyObject *obj;
    Py_buffer dst;
    Got g;
    if (!PyArg_ParseTuple(args, "KpOL:wait_read", &cursor, &sequential, &obj, &slice_ns) || take_dst(self, obj, &dst) < 0)
        return NULL;
    int r, waited = 0, err = 0;
    Py_BEGIN_ALLOW_THREADS
    uint32_t word = acquire32(self->base + self->wake);
    r = look(self, cursor, sequential, dst.buf, &g);
    uint32_t state = relaxed32(self->base + self->state);
    int final = state < 64 && ((self->final_states >> state) & 1);
    if (r == NOTHING && !final && slice_ns > 0) {
        struct timespec ts = {(time_t)(slice_ns / 1000000000), (long)(slice_ns % 1000000000)};
        /* A shared futex (no FUTEX_PRIVATE_FLAG): the broker wakes it from
         * another process. It returns at once when the word already moved. */
        if (syscall(SYS_futex, self->base + self->wake, FUTEX_WAIT, word, &ts, NULL, 0) == -1)
            err = errno;
        waited = 1;
        r = look(self, cursor, sequential, dst.buf, &g);
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&dst);
    if (waited && err == EINTR && PyErr_CheckSignals() < 0)
        return NULL; /* Ctrl-C during the wait raises, as time.sleep does */
    if (r == NOTHING && err != 0 && err != EAGAIN && err != ETIMEDOUT && err != EINTR) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return result(r, &g);
}

/* -- construction */

static int offset_in(const Slots *s, Py_ssize_t off, Py_ssize_t size, const char *what) {
    if (off < 0 || off % size != 0 || off > s->seg.len - size) {
        PyErr_Format(PyExc_ValueError, "%s at byte %zd: outside the mapping (%zd bytes) or misaligned", what, off,
                     s->seg.len);
        return -1;
    }
    return 0;
}

static int offsets(PyObject *seq, Py_ssize_t n, Py_ssize_t *out, const char *what) {
    PyObject *fast = PySequence_Fast(seq, what);
    if (fast == NULL)
        return -1;
    if (PySequence_Fast_GET_SIZE(fast) != n) {
        PyErr_Format(PyExc_ValueError, "%s: %zd offsets, expected %zd", what, PySequence_Fast_GET_SIZE(fast), n);
        Py_DECREF(fast);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        out[i] = PyLong_AsSsize_t(PySequence_Fast_GET_ITEM(fast, i));
        if (out[i] == -1 && PyErr_Occurred()) {
            Py_DECREF(fast);
            return -1;
        }
    }
    Py_DECREF(fast);
    return 0;
}

static void Slots_release(Slots *self) {
    self->base = NULL;
    PyMem_Free(self->header);
    PyMem_Free(self->payload);
    self->header = self->payload = NULL;
    if (self->have_seg) {
        self->have_seg = 0;
        PyBuffer_Release(&self->seg);
    }
}

static int Slots_init(Slots *self, PyObject *args, PyObject *kwds) {
    static char *kw[] = {"mapping", "headers", "payloads", "frame_bytes", "wake", "last_frame",
                         "state", "final_states", "fields", "retries", NULL};
    PyObject *mapping, *headers, *payloads, *finals, *fields;
    Py_ssize_t slots;
    /* Set up once: a second __init__ would free what a read running in
     * another thread (without the GIL) is using. There is no close() for the
     * same reason; the export goes with the last reference, and a read holds
     * one for as long as it runs. */
    if (self->have_seg) {
        PyErr_SetString(PyExc_TypeError, "Slots is already set up");
        return -1;
    }
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOnnnnOOn:Slots", kw, &mapping, &headers, &payloads,
                                     &self->frame_bytes, &self->wake, &self->last, &self->state, &finals, &fields,
                                     &self->retries))
        return -1;
    if (PyObject_GetBuffer(mapping, &self->seg, PyBUF_SIMPLE) < 0)
        return -1;
    self->have_seg = 1;
    slots = PySequence_Size(headers);
    if (slots < 1 || self->frame_bytes < 1 || self->retries < 1) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "a ring needs slots, a frame size and retries");
        goto fail;
    }
    self->slots = slots;
    self->header = PyMem_New(Py_ssize_t, slots);
    self->payload = PyMem_New(Py_ssize_t, slots);
    if (self->header == NULL || self->payload == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    if (offsets(headers, slots, self->header, "headers") < 0 || offsets(payloads, slots, self->payload, "payloads") < 0 ||
        offsets(fields, N_FIELDS, self->field, "fields") < 0)
        goto fail;
    if (offset_in(self, self->wake, 4, "the wake word") < 0 || offset_in(self, self->last, 8, "last_frame") < 0 ||
        offset_in(self, self->state, 4, "the state word") < 0)
        goto fail;
    for (Py_ssize_t i = 0; i < slots; i++) {
        for (int f = 0; f < N_FIELDS; f++)
            if (offset_in(self, self->header[i] + self->field[f], f == F_CHECKSUM ? 4 : 8, "a slot field") < 0)
                goto fail;
        if (self->payload[i] < 0 || self->payload[i] > self->seg.len - self->frame_bytes) {
            PyErr_Format(PyExc_ValueError, "slot %zd's payload runs past the mapping", i);
            goto fail;
        }
    }
    {
        PyObject *it = PyObject_GetIter(finals), *item;
        if (it == NULL)
            goto fail;
        self->final_states = 0;
        while ((item = PyIter_Next(it)) != NULL) {
            long v = PyLong_AsLong(item);
            Py_DECREF(item);
            if (v < 0 || v >= 64) {
                if (!PyErr_Occurred())
                    PyErr_Format(PyExc_ValueError, "final state %ld: expected 0..63", v);
                Py_DECREF(it);
                goto fail;
            }
            self->final_states |= (uint64_t)1 << v;
        }
        Py_DECREF(it);
        if (PyErr_Occurred())
            goto fail;
    }
    self->base = self->seg.buf;
    return 0;
fail:
    Slots_release(self);
    return -1;
}

static void Slots_dealloc(Slots *self) {
    Slots_release(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef Slots_members[] = {
    {"lapped", T_ULONGLONG, offsetof(Slots, lapped), READONLY, "copies thrown away: the writer overwrote the slot meanwhile"},
    {NULL, 0, 0, 0, NULL},
};

static PyMethodDef Slots_methods[] = {
    {"read", (PyCFunction)Slots_read, METH_VARARGS, read_doc},
    {"wait_read", (PyCFunction)Slots_wait_read, METH_VARARGS, wait_read_doc},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SlotsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "framebroker._fastring.Slots",
    .tp_doc = PyDoc_STR("The slots of one mapped ring, read with the seqlock protocol."),
    .tp_basicsize = sizeof(Slots),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Slots_init,
    .tp_dealloc = (destructor)Slots_dealloc,
    .tp_methods = Slots_methods,
    .tp_members = Slots_members,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "framebroker._fastring",
    .m_doc = PyDoc_STR("The ring's seqlock read and a blocking read's first wait, compiled (Linux)."),
    .m_size = -1,
};

PyMODINIT_FUNC PyInit__fastring(void) {
    if (PyType_Ready(&SlotsType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&SlotsType);
    if (PyModule_AddObject(m, "Slots", (PyObject *)&SlotsType) < 0) {
        Py_DECREF(&SlotsType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
