/* dlib's shape predictor (an ensemble of regression trees, Kazemi & Sullivan 2014) run on
 * the model's stored arrays: heygem.face.shape_predictor prepares them and calls
 * predict() once per face.
 *
 * It repeats dlib's shape_predictor::operator() operation for operation, in the same
 * precision, so the landmarks are dlib's own: the similarity fit of the mean shape in
 * double, rounded to float; each feature offset turned by it in float, every product
 * rounded before the sum (built with -ffp-contract=off: a fused multiply-add would round
 * once and move a feature pixel now and then); the box transform in double, floored; a
 * pixel outside the image reads 0; the trees' leaf increments added one tree after
 * another in float. The GIL is released while it runs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

enum { AHEAD = 8 };  /* trees: how far ahead a leaf row is fetched */

typedef struct {
    Py_ssize_t cascades, features, trees, splits, points;
} Layout;

/* The rotation and scale (row-major 2x2) that best maps the centred mean shape onto
 * shape: Umeyama's least squares. For two dimensions the best rotation and scale have a
 * closed form, the same with or without a reflection in the covariance. */
static void similarity(const float *shape, const double *centred, double sum_squares,
                       Py_ssize_t points, float m[4]) {
    double c00 = 0.0, c01 = 0.0, c10 = 0.0, c11 = 0.0;
    for (Py_ssize_t p = 0; p < points; p++) {
        double x = shape[2 * p], y = shape[2 * p + 1];
        double u = centred[2 * p], v = centred[2 * p + 1];
        c00 += x * u;
        c01 += x * v;
        c10 += y * u;
        c11 += y * v;
    }
    double a = (c00 + c11) / sum_squares, b = (c10 - c01) / sum_squares;
    m[0] = (float)a;
    m[1] = (float)-b;
    m[2] = (float)b;
    m[3] = (float)a;
}

typedef struct {
    const uint8_t *gray;
    Py_ssize_t width, height;
    double scale_x, scale_y, offset_x, offset_y;
    const float *initial;
    const double *centred;
    double sum_squares;
    const int32_t *anchors;    /* (C, F) */
    const float *deltas;       /* (C, F, 2) */
    const int32_t *pairs;      /* (C, T, S, 2) */
    const float *thresholds;   /* (C, T, S) */
    const float *leaves;       /* (C, T, S + 1, 2P) */
    float *shape;              /* (P, 2): the result, in the box's unit square */
    float *features;           /* (F,) scratch */
    const float **rows;        /* (T,) scratch: each tree's leaf */
} Job;

/* shape += leaf, element by element (vectorised: the same roundings) */
static void add(float *restrict shape, const float *restrict leaf, Py_ssize_t count) {
    for (Py_ssize_t k = 0; k < count; k++) shape[k] += leaf[k];
}

static void run(const Layout *n, Job *job) {
    const Py_ssize_t F = n->features, T = n->trees, S = n->splits, P2 = 2 * n->points;
    float *shape = job->shape, *features = job->features;
    const float **rows = job->rows;
    for (Py_ssize_t k = 0; k < P2; k++) shape[k] = job->initial[k];
    for (Py_ssize_t c = 0; c < n->cascades; c++) {
        float m[4];
        similarity(shape, job->centred, job->sum_squares, n->points, m);
        const int32_t *anchors = job->anchors + c * F;
        const float *deltas = job->deltas + c * F * 2;
        for (Py_ssize_t f = 0; f < F; f++) {
            float dx = deltas[2 * f], dy = deltas[2 * f + 1];
            float x = dx * m[0] + dy * m[1];
            float y = dx * m[2] + dy * m[3];
            x += shape[2 * anchors[f]];
            y += shape[2 * anchors[f] + 1];
            double px = (double)x * job->scale_x;
            double py = (double)y * job->scale_y;
            px += job->offset_x;
            py += job->offset_y;
            int64_t col = (int64_t)floor(px), row = (int64_t)floor(py);
            int inside = col >= 0 && col < job->width && row >= 0 && row < job->height;
            features[f] = inside ? (float)job->gray[row * job->width + col] : 0.0f;
        }
        const int32_t *pairs = job->pairs + c * T * S * 2;
        const float *thresholds = job->thresholds + c * T * S;
        const float *leaves = job->leaves + c * T * (S + 1) * P2;
        /* The trees' leaves first, then their increments: the leaf rows lie anywhere in
         * the model's 65 MB, so each is fetched a few trees ahead of its addition. */
        for (Py_ssize_t t = 0; t < T; t++) {
            const int32_t *pair = pairs + t * S * 2;
            const float *threshold = thresholds + t * S;
            Py_ssize_t node = 0;  /* dlib's complete tree: node i's children 2i+1, 2i+2 */
            while (node < S) {
                float difference = features[pair[2 * node]] - features[pair[2 * node + 1]];
                node = difference > threshold[node] ? 2 * node + 1 : 2 * node + 2;
            }
            rows[t] = leaves + (t * (S + 1) + node - S) * P2;
            if (t < AHEAD) {
                for (Py_ssize_t byte = 0; byte < P2 * 4; byte += 64)
                    __builtin_prefetch((const char *)rows[t] + byte);
            }
        }
        for (Py_ssize_t t = 0; t < T; t++) {
            if (t + AHEAD < T) {
                const char *next = (const char *)rows[t + AHEAD];
                for (Py_ssize_t byte = 0; byte < P2 * 4; byte += 64)
                    __builtin_prefetch(next + byte);
            }
            add(shape, rows[t], P2);
        }
    }
}

static int expect(const Py_buffer *buffer, Py_ssize_t items, Py_ssize_t item_size,
                  const char *name) {
    if (buffer->len != items * item_size) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd bytes, expected %zd", name, buffer->len,
                     items * item_size);
        return 0;
    }
    return 1;
}

PyDoc_STRVAR(predict_doc,
"predict(gray, width, height, left, top, right, bottom, layout, initial, centred,\n"
"        sum_squares, anchors, deltas, pairs, thresholds, leaves, out)\n\n"
"Landmarks of the face in the box (dlib's inclusive rectangle) of the uint8 image,\n"
"written to out as (P, 2) float32 integer pixels. layout: (C, F, T, S, P).");

static PyObject *predict(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer gray = {0}, initial = {0}, centred = {0}, anchors = {0}, deltas = {0},
              pairs = {0}, thresholds = {0}, leaves = {0}, out = {0};
    Py_ssize_t width, height;
    long long left, top, right, bottom;
    double sum_squares;
    Layout n;
    PyObject *result = NULL;
    if (!PyArg_ParseTuple(args, "y*nnLLLL(nnnnn)y*y*dy*y*y*y*y*w*", &gray, &width, &height,
                          &left, &top, &right, &bottom, &n.cascades, &n.features, &n.trees,
                          &n.splits, &n.points, &initial, &centred, &sum_squares, &anchors,
                          &deltas, &pairs, &thresholds, &leaves, &out))
        return NULL;
    const Py_ssize_t C = n.cascades, F = n.features, T = n.trees, S = n.splits, P = n.points;
    if (width <= 0 || height <= 0 || C < 0 || F <= 0 || T < 0 || S < 0 || P <= 0) {
        PyErr_SetString(PyExc_ValueError, "empty image or model layout");
        goto done;
    }
    if (!expect(&gray, width * height, 1, "gray") || !expect(&initial, P * 2, 4, "initial") ||
        !expect(&centred, P * 2, 8, "centred") || !expect(&anchors, C * F, 4, "anchors") ||
        !expect(&deltas, C * F * 2, 4, "deltas") || !expect(&pairs, C * T * S * 2, 4, "pairs") ||
        !expect(&thresholds, C * T * S, 4, "thresholds") ||
        !expect(&leaves, C * T * (S + 1) * P * 2, 4, "leaves") ||
        !expect(&out, P * 2, 4, "out"))
        goto done;
    float *features = PyMem_RawMalloc((size_t)F * sizeof(float));
    const float **rows = PyMem_RawMalloc((size_t)(T > 0 ? T : 1) * sizeof(float *));
    if (features == NULL || rows == NULL) {
        PyMem_RawFree(features);
        PyMem_RawFree(rows);
        PyErr_NoMemory();
        goto done;
    }
    Job job = {
        .gray = gray.buf, .width = width, .height = height,
        /* dlib's box transform: the unit square onto the box's corners; + 0.5 then floor
         * is its rounding */
        .scale_x = (double)(right - left), .scale_y = (double)(bottom - top),
        .offset_x = (double)left + 0.5, .offset_y = (double)top + 0.5,
        .initial = initial.buf, .centred = centred.buf, .sum_squares = sum_squares,
        .anchors = anchors.buf, .deltas = deltas.buf, .pairs = pairs.buf,
        .thresholds = thresholds.buf, .leaves = leaves.buf, .shape = out.buf,
        .features = features, .rows = rows,
    };
    Py_BEGIN_ALLOW_THREADS
    run(&n, &job);
    float *shape = job.shape;
    for (Py_ssize_t k = 0; k < P; k++) {
        double x = (double)shape[2 * k] * job.scale_x, y = (double)shape[2 * k + 1] * job.scale_y;
        x += job.offset_x;
        y += job.offset_y;
        shape[2 * k] = (float)floor(x);
        shape[2 * k + 1] = (float)floor(y);
    }
    Py_END_ALLOW_THREADS
    PyMem_RawFree(features);
    PyMem_RawFree(rows);
    Py_INCREF(Py_None);
    result = Py_None;
done:
    PyBuffer_Release(&gray);
    PyBuffer_Release(&initial);
    PyBuffer_Release(&centred);
    PyBuffer_Release(&anchors);
    PyBuffer_Release(&deltas);
    PyBuffer_Release(&pairs);
    PyBuffer_Release(&thresholds);
    PyBuffer_Release(&leaves);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"predict", predict, METH_VARARGS, predict_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_ert", "dlib's shape predictor on stored arrays.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__ert(void) { return PyModule_Create(&module); }
