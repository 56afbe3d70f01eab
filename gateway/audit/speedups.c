/* gateway.audit.speedups: the audit verifier's two hot loops, compiled.
 *
 * Optional: setup.py builds it where there is a C compiler and OpenSSL's headers; without it
 * the same loops run in Python (merkle.Tree.extend_hashes, fast_chain.check_lines), about
 * twice as slowly. SHA-256 is OpenSSL's, as hashlib's is.
 *
 * `extend_peaks` is merkle.Tree.extend_hashes, exactly.
 *
 * `plain_lines` is fast_chain's per-line loop for plain records. It takes the lines of the
 * common shape and stops at the first it is not sure of, which fast_chain then checks in
 * Python, so it only ever has to be strict, never complete:
 *
 * - A line it takes is canonical JSON as `gateway.audit.chain.canonical` writes it: one flat
 *   object, keys of printable ASCII without escapes in strictly ascending order, no
 *   whitespace, strings of printable ASCII with only the escapes Python's json writes,
 *   integers of at most 18 digits, floats exactly as Python's repr writes them (checked with
 *   CPython's own repr), true, false, null and arrays of those. Anything else stops it:
 *   non-ASCII bytes, a nested object, a float that repr would write otherwise.
 * - Its record is plain: `event` is none of audit.chain, audit.opened, audit.checkpoint;
 *   `seq` is the next integer; `prev` is the last hash; `chain` is the chain's; `ts` a string.
 * - Its seal holds: `hash` (not the first member) is SHA-256 of the line without its `hash`
 *   and `mac` members, `mac` HMAC-SHA256 of the same bytes under the first key (with no key:
 *   64 lowercase hex digits; with a key and none: stop).
 * - It is not `stop_seq`, a record the caller checks itself.
 *
 * For each line taken it appends the record's Merkle leaf hash (RFC 9162: SHA-256 of 0x00
 * and the line) to `leaves`, and the line to `matched` if it holds every needle (`audit
 * query`'s filters, on bytes: the caller parses those lines).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <limits.h>
#include <math.h>
#include <string.h>
#include <openssl/evp.h>

#define HEX_LEN 64
#define DIGEST_LEN 32
#define BLOCK_LEN 64
#define MAX_INT_DIGITS 18 /* below 2**63: integers beyond are Python's to judge */
#define MAX_FLOAT_LEN 40
#define MAX_ARRAY_DEPTH 16

typedef struct {
    const unsigned char *at; /* the value's first byte (a string's: after the quote) */
    Py_ssize_t len;          /* the value's length (a string's: without quotes) */
    Py_ssize_t member;       /* where the member starts: its comma, or its key's quote */
    Py_ssize_t end;          /* one past the member's last byte */
    char kind;               /* 's' string, 'i' integer, 'o' other; 0: absent */
} Member;

typedef struct {
    Member chain, event, hash, mac, prev, seq, ts;
} Fields;

static EVP_MD *sha256_md;
static unsigned char plain_byte[256]; /* a string's bytes that need no second look */ /* fetched once: an implicit fetch per digest costs as much */

/* One past the string whose opening quote is at s[i - 1], or -1 if not canonical. */
static Py_ssize_t
string_end(const unsigned char *s, Py_ssize_t i, Py_ssize_t n)
{
    while (i < n) {
        while (i < n && plain_byte[s[i]])
            i++;
        if (i >= n)
            return -1;
        unsigned char c = s[i];
        if (c == '"')
            return i + 1;
        if (c < 0x20 || c >= 0x80)
            return -1;
        if (c == '\\') {
            if (i + 1 >= n)
                return -1;
            c = s[i + 1];
            if (c == '"' || c == '\\' || c == 'n' || c == 'r' || c == 't' || c == 'b' ||
                c == 'f') {
                i += 2;
                continue;
            }
            /* \u00XX only for the control characters with no short escape, lowercase */
            if (c != 'u' || i + 6 > n || s[i + 2] != '0' || s[i + 3] != '0')
                return -1;
            unsigned char high = s[i + 4], low = s[i + 5];
            int value;
            if (high != '0' && high != '1')
                return -1;
            if (low >= '0' && low <= '9')
                value = low - '0';
            else if (low >= 'a' && low <= 'f')
                value = low - 'a' + 10;
            else
                return -1;
            value += (high - '0') * 16;
            if (value == 0x08 || value == 0x09 || value == 0x0a || value == 0x0c ||
                value == 0x0d)
                return -1;
            i += 6;
            continue;
        }
        i++;
    }
    return -1;
}

/* Whether the float token is what Python's repr writes for the number it parses to. */
static int
float_is_canonical(const unsigned char *s, Py_ssize_t len)
{
    char buffer[MAX_FLOAT_LEN + 1];
    char *end;
    if (len > MAX_FLOAT_LEN)
        return 0;
    memcpy(buffer, s, len);
    buffer[len] = '\0';
    double x = PyOS_string_to_double(buffer, &end, NULL);
    if (x == -1.0 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (end != buffer + len || !isfinite(x))
        return 0;
    char *written = PyOS_double_to_string(x, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (written == NULL) {
        PyErr_Clear();
        return 0;
    }
    int same = (Py_ssize_t)strlen(written) == len && memcmp(written, buffer, len) == 0;
    PyMem_Free(written);
    return same;
}

/* One past the number at s[i], or -1 if not canonical; *kind: 'i' or 'o'. */
static Py_ssize_t
number_end(const unsigned char *s, Py_ssize_t i, Py_ssize_t n, char *kind)
{
    Py_ssize_t start = i;
    if (i < n && s[i] == '-')
        i++;
    if (i >= n)
        return -1;
    if (s[i] == '0') {
        i++;
    } else if (s[i] >= '1' && s[i] <= '9') {
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
    } else {
        return -1;
    }
    Py_ssize_t whole = i;
    int is_float = 0;
    if (i < n && s[i] == '.') {
        is_float = 1;
        i++;
        if (i >= n || s[i] < '0' || s[i] > '9')
            return -1;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        is_float = 1;
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-'))
            i++;
        if (i >= n || s[i] < '0' || s[i] > '9')
            return -1;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
    }
    if (is_float) {
        *kind = 'o';
        return float_is_canonical(s + start, i - start) ? i : -1;
    }
    /* Python writes no "-0", and integers this long are left to it */
    int negative = s[start] == '-';
    if (whole - start - negative > MAX_INT_DIGITS || (negative && s[start + 1] == '0'))
        return -1;
    *kind = 'i';
    return i;
}

/* One past the value at s[i], or -1 if it is not one this module is sure of. */
static Py_ssize_t
value_end(const unsigned char *s, Py_ssize_t i, Py_ssize_t n, int depth, char *kind)
{
    if (i >= n)
        return -1;
    *kind = 'o';
    switch (s[i]) {
    case '"':
        *kind = 's';
        return string_end(s, i + 1, n);
    case 't':
        return (n - i >= 4 && memcmp(s + i, "true", 4) == 0) ? i + 4 : -1;
    case 'f':
        return (n - i >= 5 && memcmp(s + i, "false", 5) == 0) ? i + 5 : -1;
    case 'n':
        return (n - i >= 4 && memcmp(s + i, "null", 4) == 0) ? i + 4 : -1;
    case '[': {
        char inner;
        if (depth >= MAX_ARRAY_DEPTH)
            return -1;
        i++;
        if (i < n && s[i] == ']')
            return i + 1;
        for (;;) {
            i = value_end(s, i, n, depth + 1, &inner);
            if (i < 0 || i >= n)
                return -1;
            if (s[i] == ']')
                return i + 1;
            if (s[i] != ',')
                return -1;
            i++;
        }
    }
    default:
        if (s[i] == '-' || (s[i] >= '0' && s[i] <= '9'))
            return number_end(s, i, n, kind);
        return -1; /* a nested object among them: the Python path's */
    }
}

static Member *
known(Fields *fields, const unsigned char *key, Py_ssize_t len)
{
    /* by length first: a constant-size memcmp is compiled inline */
#define KEY(name)                                                                          \
    if (memcmp(key, #name, sizeof(#name) - 1) == 0)                                        \
        return &fields->name;
    switch (len) {
    case 2: KEY(ts) break;
    case 3: KEY(mac) KEY(seq) break;
    case 4: KEY(hash) KEY(prev) break;
    case 5: KEY(chain) KEY(event) break;
    }
#undef KEY
    return NULL;
}

/* Whether key b (length b_len) sorts after key a: byte order, a prefix first (for printable
   ASCII, Python's order of the strings). */
static int
sorts_after(const unsigned char *a, Py_ssize_t a_len, const unsigned char *b, Py_ssize_t b_len)
{
    Py_ssize_t common = a_len < b_len ? a_len : b_len;
    for (Py_ssize_t i = 0; i < common; i++)
        if (a[i] != b[i])
            return a[i] < b[i];
    return a_len < b_len;
}

/* Whether s[0:n] is one canonical flat object; its known members go to `fields`. */
static int
parse_line(const unsigned char *s, Py_ssize_t n, Fields *fields)
{
    const unsigned char *last_key = NULL;
    Py_ssize_t last_len = 0, i = 1;
    memset(fields, 0, sizeof(*fields));
    if (n < 2 || s[0] != '{' || s[n - 1] != '}' || s[1] == '}')
        return 0;
    for (;;) {
        Py_ssize_t member = i == 1 ? 1 : i - 1;
        if (s[i] != '"')
            return 0;
        Py_ssize_t key = ++i;
        while (i < n && s[i] >= 0x20 && s[i] < 0x7f && s[i] != '"' && s[i] != '\\')
            i++;
        if (i >= n || s[i] != '"')
            return 0;
        Py_ssize_t key_len = i - key;
        /* strictly ascending: no repeats, Python's order */
        if (last_key != NULL && !sorts_after(last_key, last_len, s + key, key_len))
            return 0;
        last_key = s + key;
        last_len = key_len;
        i++;
        if (i >= n || s[i] != ':')
            return 0;
        i++;
        char kind;
        Py_ssize_t value = i;
        i = value_end(s, i, n, 0, &kind);
        if (i < 0 || i >= n)
            return 0;
        Member *slot = known(fields, s + key, key_len);
        if (slot != NULL) {
            slot->kind = kind;
            slot->member = member;
            slot->end = i;
            slot->at = kind == 's' ? s + value + 1 : s + value;
            slot->len = kind == 's' ? i - value - 2 : i - value;
        }
        if (s[i] == '}')
            return i == n - 1;
        if (s[i] != ',')
            return 0;
        i++;
        if (i >= n)
            return 0;
    }
}

static int
is_lower_hex(const unsigned char *s, Py_ssize_t len)
{
    if (len != HEX_LEN)
        return 0;
    for (Py_ssize_t i = 0; i < len; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    return 1;
}

static void
to_hex(const unsigned char *digest, unsigned char *hex)
{
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < DIGEST_LEN; i++) {
        hex[2 * i] = digits[digest[i] >> 4];
        hex[2 * i + 1] = digits[digest[i] & 15];
    }
}

static int
equals(const Member *member, const char *text)
{
    Py_ssize_t len = (Py_ssize_t)strlen(text);
    return member->kind == 's' && member->len == len && memcmp(member->at, text, len) == 0;
}

static int
is_special(const Member *event)
{
    return equals(event, "audit.chain") || equals(event, "audit.opened") ||
           equals(event, "audit.checkpoint");
}

typedef struct {
    EVP_MD_CTX *context;
    const unsigned char *chain;
    Py_ssize_t chain_len;
    int keyed;
    unsigned char inner_pad[BLOCK_LEN], outer_pad[BLOCK_LEN];
    const unsigned char **needles;
    Py_ssize_t *needle_lens;
    Py_ssize_t needle_count;
} Walk;

/* SHA-256 of up to three pieces after `prefix`; 0 on an OpenSSL failure. */
static int
digest(Walk *walk, const unsigned char *prefix, size_t prefix_len,
       const unsigned char *const *pieces, const size_t *lens, int count,
       unsigned char *out)
{
    unsigned int out_len;
    if (!EVP_DigestInit_ex(walk->context, sha256_md, NULL))
        return 0;
    if (prefix_len && !EVP_DigestUpdate(walk->context, prefix, prefix_len))
        return 0;
    for (int i = 0; i < count; i++)
        if (lens[i] && !EVP_DigestUpdate(walk->context, pieces[i], lens[i]))
            return 0;
    return EVP_DigestFinal_ex(walk->context, out, &out_len) && out_len == DIGEST_LEN;
}

static int
holds_every_needle(const Walk *walk, const unsigned char *s, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < walk->needle_count; i++)
        if (memmem(s, n, walk->needles[i], walk->needle_lens[i]) == NULL)
            return 0;
    return 1;
}

/* 1: the line checks out, its leaf is in `leaf` and its hash in `head` (which held the last
   record's); 0: leave it to Python; -1: error. */
static int
take(Walk *walk, const unsigned char *s, Py_ssize_t n, long long seq, unsigned char *head,
     int *has_mac, unsigned char *leaf)
{
    Fields f;
    unsigned char computed[DIGEST_LEN], hex[HEX_LEN];
    if (!parse_line(s, n, &f))
        return 0;
    if (f.seq.kind != 'i' || f.hash.kind != 's' || f.event.kind != 's' || f.ts.kind != 's' ||
        f.prev.kind != 's' || f.chain.kind != 's' || is_special(&f.event))
        return 0;
    if (f.chain.len != walk->chain_len || memcmp(f.chain.at, walk->chain, f.chain.len) != 0)
        return 0;
    if (f.prev.len != HEX_LEN || memcmp(f.prev.at, head, HEX_LEN) != 0)
        return 0;
    /* seq: digits only (no sign, no leading zero: number_end saw to it) */
    long long number = 0;
    if (f.seq.at[0] == '-')
        return 0;
    for (Py_ssize_t i = 0; i < f.seq.len; i++)
        number = number * 10 + (f.seq.at[i] - '0');
    if (number != seq + 1 || f.hash.len != HEX_LEN || f.hash.member == 1)
        return 0;
    /* The body: the line without `,"hash":"..."` and `,"mac":"..."` (keys sort "hash"
       before "mac", and neither is first) */
    const unsigned char *pieces[3];
    size_t lens[3];
    int count;
    if (f.mac.kind == 0) {
        if (walk->keyed)
            return 0;
        pieces[0] = s;
        lens[0] = (size_t)f.hash.member;
        pieces[1] = s + f.hash.end;
        lens[1] = (size_t)(n - f.hash.end);
        count = 2;
    } else {
        if (f.mac.kind != 's' || f.mac.member == 1 || f.mac.member < f.hash.end)
            return 0;
        pieces[0] = s;
        lens[0] = (size_t)f.hash.member;
        pieces[1] = s + f.hash.end;
        lens[1] = (size_t)(f.mac.member - f.hash.end);
        pieces[2] = s + f.mac.end;
        lens[2] = (size_t)(n - f.mac.end);
        count = 3;
        if (walk->keyed) {
            unsigned char inner[DIGEST_LEN];
            const unsigned char *inner_piece[1] = {inner};
            const size_t inner_len[1] = {DIGEST_LEN};
            if (!digest(walk, walk->inner_pad, BLOCK_LEN, pieces, lens, count, inner) ||
                !digest(walk, walk->outer_pad, BLOCK_LEN, inner_piece, inner_len, 1,
                        computed))
                return -1;
            to_hex(computed, hex);
            if (f.mac.len != HEX_LEN || memcmp(f.mac.at, hex, HEX_LEN) != 0)
                return 0; /* maybe another key's: Python tries them all */
        } else if (!is_lower_hex(f.mac.at, f.mac.len)) {
            return 0;
        }
        *has_mac = 1;
    }
    if (!digest(walk, NULL, 0, pieces, lens, count, computed))
        return -1;
    to_hex(computed, hex);
    if (memcmp(f.hash.at, hex, HEX_LEN) != 0)
        return 0;
    const unsigned char *whole[1] = {s};
    const size_t whole_len[1] = {(size_t)n};
    if (!digest(walk, (const unsigned char *)"\0", 1, whole, whole_len, 1, leaf))
        return -1;
    memcpy(head, hex, HEX_LEN);
    return 1;
}

PyDoc_STRVAR(plain_lines_doc,
"plain_lines(chunk, pos, end, chain, seq, head, stop_seq, key, needles, leaves, matched)\n"
"--\n\n"
"Check chunk's lines from pos to end, each ending in a newline, while they are plain records\n"
"that verify: seq is the last record's number, head (64 hex bytes) its hash, key the\n"
"first HMAC key or None, stop_seq a record number not to take (0: none). Appends each\n"
"taken line's Merkle leaf hash to leaves and, unless matched is None, each taken line\n"
"holding every one of needles to matched. Returns (pos, seq, head, has_mac): where it\n"
"stopped, the last record taken, and whether any taken record had a mac.");

static PyObject *
plain_lines(PyObject *module, PyObject *args)
{
    (void)module;
    Py_buffer chunk, chain, head_in, key = {0};
    Py_ssize_t pos, end;
    long long seq, stop_seq;
    PyObject *key_object, *needles, *leaves, *matched, *result = NULL;
    Walk state = {0};
    unsigned char head[HEX_LEN];
    int has_mac = 0;
    if (!PyArg_ParseTuple(args, "y*nny*Ly*LOO!O!O:plain_lines", &chunk, &pos, &end, &chain,
                          &seq, &head_in, &stop_seq, &key_object, &PyTuple_Type, &needles,
                          &PyList_Type, &leaves, &matched))
        return NULL;
    if (head_in.len != HEX_LEN || pos < 0 || end > chunk.len || pos > end ||
        (matched != Py_None && !PyList_Check(matched))) {
        PyErr_SetString(PyExc_ValueError, "plain_lines: head must be 64 bytes, pos and end "
                                          "within chunk, matched a list");
        goto done;
    }
    memcpy(head, head_in.buf, HEX_LEN);
    if (key_object != Py_None) {
        if (PyObject_GetBuffer(key_object, &key, PyBUF_SIMPLE) < 0)
            goto done;
        unsigned char block[BLOCK_LEN] = {0};
        if (key.len > BLOCK_LEN) {
            unsigned int len;
            if (!EVP_Digest(key.buf, key.len, block, &len, sha256_md, NULL)) {
                PyErr_SetString(PyExc_RuntimeError, "plain_lines: SHA-256 failed");
                goto done;
            }
        } else {
            memcpy(block, key.buf, key.len);
        }
        for (int i = 0; i < BLOCK_LEN; i++) {
            state.inner_pad[i] = block[i] ^ 0x36;
            state.outer_pad[i] = block[i] ^ 0x5c;
        }
        state.keyed = 1;
    }
    state.needle_count = PyTuple_GET_SIZE(needles);
    state.needles = PyMem_Calloc(state.needle_count + 1, sizeof(*state.needles));
    state.needle_lens = PyMem_Calloc(state.needle_count + 1, sizeof(*state.needle_lens));
    state.context = EVP_MD_CTX_new();
    if (state.needles == NULL || state.needle_lens == NULL || state.context == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < state.needle_count; i++) {
        PyObject *needle = PyTuple_GET_ITEM(needles, i);
        if (!PyBytes_Check(needle)) {
            PyErr_SetString(PyExc_TypeError, "plain_lines: needles must be bytes");
            goto done;
        }
        state.needles[i] = (const unsigned char *)PyBytes_AS_STRING(needle);
        state.needle_lens[i] = PyBytes_GET_SIZE(needle);
    }
    state.chain = chain.buf;
    state.chain_len = chain.len;
    const unsigned char *s = chunk.buf;
    while (pos < end && seq > 0 && seq + 1 != stop_seq) {
        const unsigned char *newline = memchr(s + pos, '\n', end - pos);
        if (newline == NULL)
            break;
        Py_ssize_t n = newline - (s + pos);
        unsigned char leaf[DIGEST_LEN];
        int taken = take(&state, s + pos, n, seq, head, &has_mac, leaf);
        if (taken < 0) {
            PyErr_SetString(PyExc_RuntimeError, "plain_lines: SHA-256 failed");
            goto done;
        }
        if (taken == 0)
            break;
        PyObject *leaf_object = PyBytes_FromStringAndSize((const char *)leaf, DIGEST_LEN);
        if (leaf_object == NULL || PyList_Append(leaves, leaf_object) < 0) {
            Py_XDECREF(leaf_object);
            goto done;
        }
        Py_DECREF(leaf_object);
        if (matched != Py_None && holds_every_needle(&state, s + pos, n)) {
            PyObject *line = PyBytes_FromStringAndSize((const char *)s + pos, n);
            if (line == NULL || PyList_Append(matched, line) < 0) {
                Py_XDECREF(line);
                goto done;
            }
            Py_DECREF(line);
        }
        seq += 1;
        pos += n + 1;
    }
    result = Py_BuildValue("nLy#O", pos, seq, head, (Py_ssize_t)HEX_LEN,
                           has_mac ? Py_True : Py_False);
done:
    if (state.context != NULL)
        EVP_MD_CTX_free(state.context);
    PyMem_Free(state.needles);
    PyMem_Free(state.needle_lens);
    if (key.obj != NULL)
        PyBuffer_Release(&key);
    PyBuffer_Release(&chunk);
    PyBuffer_Release(&chain);
    PyBuffer_Release(&head_in);
    return result;
}

PyDoc_STRVAR(extend_peaks_doc,
"extend_peaks(peaks, size, leaves)\n"
"--\n\n"
"gateway.audit.merkle.Tree.extend_hashes on the tree's peaks and size: each leaf hash\n"
"appended, equal-sized peaks merged (node hash: SHA-256 of 0x01, left, right). Returns the\n"
"new size; peaks is changed in place.");

static PyObject *
extend_peaks(PyObject *module, PyObject *args)
{
    PyObject *peaks, *leaves;
    long long size;
    unsigned char stack[64][DIGEST_LEN];
    int height = 0;
    EVP_MD_CTX *context = NULL;
    (void)module;
    if (!PyArg_ParseTuple(args, "O!LO!:extend_peaks", &PyList_Type, &peaks, &size,
                          &PyList_Type, &leaves))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(peaks);
    if (size < 0 || size > LLONG_MAX - PyList_GET_SIZE(leaves) ||
        count != __builtin_popcountll((unsigned long long)size)) {
        PyErr_SetString(PyExc_ValueError, "extend_peaks: peaks do not match size");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *peak = PyList_GET_ITEM(peaks, i);
        if (!PyBytes_Check(peak) || PyBytes_GET_SIZE(peak) != DIGEST_LEN) {
            PyErr_SetString(PyExc_ValueError, "extend_peaks: a peak is not 32 bytes");
            return NULL;
        }
        memcpy(stack[height++], PyBytes_AS_STRING(peak), DIGEST_LEN);
    }
    context = EVP_MD_CTX_new();
    if (context == NULL)
        return PyErr_NoMemory();
    Py_ssize_t total = PyList_GET_SIZE(leaves);
    for (Py_ssize_t i = 0; i < total; i++) {
        PyObject *leaf = PyList_GET_ITEM(leaves, i);
        unsigned char node[DIGEST_LEN];
        unsigned int len;
        if (!PyBytes_Check(leaf) || PyBytes_GET_SIZE(leaf) != DIGEST_LEN) {
            PyErr_SetString(PyExc_ValueError, "extend_peaks: a leaf is not 32 bytes");
            goto fail;
        }
        memcpy(node, PyBytes_AS_STRING(leaf), DIGEST_LEN);
        for (long long carry = size; carry & 1; carry >>= 1) {
            height--;
            if (!EVP_DigestInit_ex(context, sha256_md, NULL) ||
                !EVP_DigestUpdate(context, "\1", 1) ||
                !EVP_DigestUpdate(context, stack[height], DIGEST_LEN) ||
                !EVP_DigestUpdate(context, node, DIGEST_LEN) ||
                !EVP_DigestFinal_ex(context, node, &len)) {
                PyErr_SetString(PyExc_RuntimeError, "extend_peaks: SHA-256 failed");
                goto fail;
            }
        }
        memcpy(stack[height++], node, DIGEST_LEN);
        size++;
    }
    EVP_MD_CTX_free(context);
    /* the peaks back, as Python objects, once */
    PyObject *fresh = PyList_New(height);
    if (fresh == NULL)
        return NULL;
    for (int i = 0; i < height; i++) {
        PyObject *peak = PyBytes_FromStringAndSize((const char *)stack[i], DIGEST_LEN);
        if (peak == NULL) {
            Py_DECREF(fresh);
            return NULL;
        }
        PyList_SET_ITEM(fresh, i, peak);
    }
    int replaced = PyList_SetSlice(peaks, 0, PyList_GET_SIZE(peaks), fresh);
    Py_DECREF(fresh);
    return replaced < 0 ? NULL : PyLong_FromLongLong(size);
fail:
    EVP_MD_CTX_free(context);
    return NULL;
}

/* A growing byte buffer for csv_rows. */
typedef struct {
    char *data;
    Py_ssize_t len, size;
} Text;

static int
reserve(Text *text, Py_ssize_t more)
{
    if (text->len + more <= text->size)
        return 1;
    Py_ssize_t size = (text->len + more) * 2;
    char *data = PyMem_Realloc(text->data, size);
    if (data == NULL)
        return 0;
    text->data = data;
    text->size = size;
    return 1;
}

/* 1: the field written; 0: not a field this writes the same as csv (fall back); -1: error */
static int
csv_field(Text *text, PyObject *field)
{
    if (field == Py_None)
        return 1;
    if (PyLong_CheckExact(field)) {
        int overflow;
        long long value = PyLong_AsLongLongAndOverflow(field, &overflow);
        if (overflow || (value == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return 0;
        }
        if (!reserve(text, 24))
            return -1;
        text->len += snprintf(text->data + text->len, 24, "%lld", value);
        return 1;
    }
    if (!PyUnicode_CheckExact(field) || !PyUnicode_IS_ASCII(field))
        return 0;
    const char *chars = (const char *)PyUnicode_1BYTE_DATA(field);
    Py_ssize_t len = PyUnicode_GET_LENGTH(field), quotes = 0;
    int special = 0;
    for (Py_ssize_t i = 0; i < len; i++) {
        char c = chars[i];
        if (c == '"')
            quotes++;
        special |= c == ',' || c == '"' || c == '\r' || c == '\n';
    }
    if (!reserve(text, len + quotes + 2))
        return -1;
    if (!special) {
        memcpy(text->data + text->len, chars, len);
        text->len += len;
        return 1;
    }
    /* quoted, each quote doubled (csv's QUOTE_MINIMAL with doublequote) */
    text->data[text->len++] = '"';
    for (Py_ssize_t i = 0; i < len; i++) {
        if (chars[i] == '"')
            text->data[text->len++] = '"';
        text->data[text->len++] = chars[i];
    }
    text->data[text->len++] = '"';
    return 1;
}

PyDoc_STRVAR(csv_rows_doc,
"csv_rows(rows)\n"
"--\n\n"
"The rows (a list of tuples) as csv.writer(lineterminator='\\r\\n').writerows writes them\n"
"(QUOTE_MINIMAL, quotes doubled), or None when a row is not one it is sure to write the\n"
"same: fields other than None, int and ASCII str, or a row of fewer than two fields.");

static PyObject *
csv_rows(PyObject *module, PyObject *rows)
{
    Text text = {0};
    PyObject *result = NULL;
    (void)module;
    if (!PyList_Check(rows)) {
        PyErr_SetString(PyExc_TypeError, "csv_rows: rows must be a list");
        return NULL;
    }
    for (Py_ssize_t r = 0; r < PyList_GET_SIZE(rows); r++) {
        PyObject *row = PyList_GET_ITEM(rows, r);
        if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) < 2)
            goto fall_back;
        for (Py_ssize_t f = 0; f < PyTuple_GET_SIZE(row); f++) {
            if (f > 0) {
                if (!reserve(&text, 1))
                    goto no_memory;
                text.data[text.len++] = ',';
            }
            int written = csv_field(&text, PyTuple_GET_ITEM(row, f));
            if (written < 0)
                goto no_memory;
            if (written == 0)
                goto fall_back;
        }
        if (!reserve(&text, 2))
            goto no_memory;
        text.data[text.len++] = '\r';
        text.data[text.len++] = '\n';
    }
    result = PyUnicode_DecodeASCII(text.data ? text.data : "", text.len, "strict");
    PyMem_Free(text.data);
    return result;
no_memory:
    PyMem_Free(text.data);
    return PyErr_NoMemory();
fall_back:
    PyMem_Free(text.data);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"csv_rows", csv_rows, METH_O, csv_rows_doc},
    {"plain_lines", plain_lines, METH_VARARGS, plain_lines_doc},
    {"extend_peaks", extend_peaks, METH_VARARGS, extend_peaks_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "gateway.audit.speedups",
    .m_doc = "The verifier's two hot loops, compiled (see speedups.c).",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC
PyInit_speedups(void)
{
    for (int c = 0x20; c < 0x80; c++)
        plain_byte[c] = c != '"' && c != '\\';
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (sha256_md == NULL) {
        PyErr_SetString(PyExc_ImportError, "OpenSSL has no SHA-256");
        return NULL;
    }
    return PyModule_Create(&speedups);
}
