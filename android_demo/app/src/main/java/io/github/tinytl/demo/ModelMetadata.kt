package io.github.tinytl.demo

import org.json.JSONArray
import org.json.JSONException
import org.json.JSONObject
import kotlin.math.PI
import kotlin.math.cos
import kotlin.math.min

/** model.json is missing a key, has a wrong type, or describes something the app cannot run. */
class MetadataException(message: String) : Exception(message)

/** A tensor as model.json declares it; shape [] is a scalar. Shapes are lists so that `==` compares contents. */
data class TensorSpec(val name: String, val shape: List<Int>, val dtype: String) {
    val elementCount: Long get() = shape.fold(1L) { n, d -> n * d }
    val byteSize: Int get() = Math.toIntExact(elementCount * dtypeByteSize(dtype))
    override fun toString() = "$name: $dtype$shape"
}

data class SignatureSpec(val inputs: Map<String, TensorSpec>, val outputs: Map<String, TensorSpec>)

/** One entry of model.json "weights": a tensor of get_weights / set_weights; kind is trainable, slot or step. */
data class WeightSpec(val tensor: TensorSpec, val kind: String) {
    val name: String get() = tensor.name
}

/** model.json "input": how a picture becomes `x` (see Preprocessor). */
data class InputSpec(
    val height: Int,
    val width: Int,
    val channels: Int,
    val layout: String,
    val mean: FloatArray,
    val std: FloatArray,
    val cropFraction: Double,
    val resize: String,
)

/** model.json "optimizer". The app only needs the learning-rate schedule, and only if `train` takes `lr`. */
data class OptimizerSpec(val name: String, val lr: Double, val schedule: String, val totalSteps: Long) {
    /**
     * The learning rate of the optimizer step that starts with the step counter at [step] (Keras semantics: the
     * schedule sees the number of steps already taken). Cosine: lr * 0.5 * (1 + cos(pi * min(step, T) / T)),
     * decaying to 0 at T = total_steps, as keras.optimizers.schedules.CosineDecay(lr, T) with alpha 0.
     */
    fun learningRate(step: Long): Float = when {
        schedule == SCHEDULE_COSINE && totalSteps > 0 ->
            (lr * 0.5 * (1.0 + cos(PI * min(step, totalSteps).toDouble() / totalSteps))).toFloat()
        else -> lr.toFloat()
    }

    /** True once a cosine schedule has decayed to zero: further steps would change nothing. */
    fun finished(step: Long): Boolean = schedule == SCHEDULE_COSINE && totalSteps > 0 && step >= totalSteps

    companion object {
        const val SCHEDULE_COSINE = "cosine"
        const val SCHEDULE_CONSTANT = "constant"
    }
}

/**
 * model.json "initial_values": the trainables' initial values, kept beside the model in [file] (X.init.npz) with
 * sha256 [sha256]. The variables start at zero in the .tflite; `load(values, group)` assigns group j (the tensors
 * [groups] names, flattened, concatenated, zero-padded to [length] floats) once per group. See InitialValues.kt.
 */
data class InitialValuesSpec(val file: String, val sha256: String, val length: Int, val groups: List<List<String>>)

/** Everything the exporter decided, parsed from model.json (schema: the comment block in tinytl_tf/contract.py). */
class ModelMetadata(
    val format: String,
    val fingerprint: String,
    val tflite: String,
    val backbone: String,
    val method: String,
    val numClasses: Int,
    val labels: List<String>,
    val batchSize: Int,
    val input: InputSpec,
    val signatures: Map<String, SignatureSpec>,
    val weights: List<WeightSpec>,
    val optimizer: OptimizerSpec,
    val ops: List<String>,
    val initialValues: InitialValuesSpec,
) {
    companion object {
        /** Parses and checks model.json text; throws [MetadataException] naming the offending key. */
        fun parse(text: String): ModelMetadata {
            val root = try {
                JSONObject(text)
            } catch (e: JSONException) {
                throw MetadataException("${Contract.METADATA_FILE} is not valid JSON: ${e.message}")
            }
            val format = root.str("format")
            if (format != Contract.METADATA_FORMAT) {
                throw MetadataException(
                    "${Contract.METADATA_FILE} has format '$format', this app reads '${Contract.METADATA_FORMAT}'"
                )
            }
            val meta = ModelMetadata(
                format = format,
                fingerprint = root.str("fingerprint").lowercase(),
                tflite = root.str("tflite"),
                backbone = root.str("backbone"),
                method = root.str("method"),
                numClasses = root.int("num_classes"),
                labels = root.arr("labels").let { a -> List(a.length()) { a.str(it, "labels") } },
                batchSize = root.int("batch_size"),
                input = parseInput(root.obj("input")),
                signatures = root.obj("signatures").let { s ->
                    s.keys().asSequence().associateWith { parseSignature(s.obj(it, "signatures"), "signatures.$it") }
                },
                weights = root.arr("weights").let { a ->
                    List(a.length()) { i -> parseWeight(a.obj(i, "weights"), "weights[$i]") }
                },
                optimizer = parseOptimizer(root.obj("optimizer")),
                ops = root.arr("ops").let { a -> List(a.length()) { a.str(it, "ops") } },
                initialValues = parseInitialValues(root.obj("initial_values")),
            )
            meta.check()
            return meta
        }

        private fun parseInput(o: JSONObject): InputSpec {
            val mean = o.floats("mean", "input.mean")
            val std = o.floats("std", "input.std")
            return InputSpec(
                height = o.int("height", "input.height"),
                width = o.int("width", "input.width"),
                channels = o.int("channels", "input.channels"),
                layout = o.str("layout", "input.layout"),
                mean = mean,
                std = std,
                cropFraction = o.num("crop_fraction", "input.crop_fraction"),
                resize = o.str("resize", "input.resize"),
            )
        }

        private fun parseSignature(o: JSONObject, where: String): SignatureSpec {
            fun tensors(key: String): Map<String, TensorSpec> {
                val t = o.obj(key, "$where.$key")
                return t.keys().asSequence().associateWith { name ->
                    parseTensor(name, t.obj(name, "$where.$key"), "$where.$key.$name")
                }
            }
            return SignatureSpec(tensors("inputs"), tensors("outputs"))
        }

        private fun parseWeight(o: JSONObject, where: String) =
            WeightSpec(parseTensor(o.str("name", "$where.name"), o, where), o.str("kind", "$where.kind"))

        private fun parseTensor(name: String, o: JSONObject, where: String): TensorSpec {
            val shape = o.arr("shape", "$where.shape").let { a -> List(a.length()) { a.int(it, "$where.shape") } }
            val dtype = o.str("dtype", "$where.dtype")
            if (shape.any { it < 0 }) throw MetadataException("$where.shape $shape has a negative (dynamic) dimension")
            dtypeByteSize(dtype, where) // rejects dtypes the app cannot copy
            return TensorSpec(name, shape, dtype)
        }

        private fun parseInitialValues(o: JSONObject) = InitialValuesSpec(
            file = o.str("file", "initial_values.file"),
            sha256 = o.str("sha256", "initial_values.sha256").lowercase(),
            length = o.int("length", "initial_values.length"),
            groups = o.arr("groups", "initial_values.groups").let { a ->
                List(a.length()) { i ->
                    val g = a.arr(i, "initial_values.groups")
                    List(g.length()) { g.str(it, "initial_values.groups[$i]") }
                }
            },
        )

        private fun parseOptimizer(o: JSONObject) = OptimizerSpec(
            name = o.str("name", "optimizer.name"),
            lr = o.num("lr", "optimizer.lr"),
            schedule = o.str("schedule", "optimizer.schedule"),
            totalSteps = o.num("total_steps", "optimizer.total_steps").toLong(),
        )
    }

    /** Consistency checks that need no interpreter; the signatures are checked against the .tflite in TinyTlModel. */
    private fun check() {
        fun fail(msg: String): Nothing = throw MetadataException("${Contract.METADATA_FILE}: $msg")
        if (!Regex("[0-9a-f]{64}").matches(fingerprint)) fail("fingerprint '$fingerprint' is not a sha256 hex digest")
        if (labels.size != numClasses) fail("${labels.size} labels for num_classes = $numClasses")
        if (labels.toSet().size != labels.size) fail("labels are not unique")
        if (batchSize != 1) fail("batch_size is $batchSize; the app trains and infers one picture at a time (1)")
        with(input) {
            if (channels != 3 || layout != "NHWC") fail("input is $layout with $channels channels; expected NHWC, 3")
            // Preprocessor mirrors tinytl_tf.imagefiles.eval_transform, which crops a square.
            if (height != width || height <= 0) fail("input is ${height}x$width; expected a square size")
            if (mean.size != 3 || std.size != 3) fail("input.mean and input.std need 3 values each")
            if (std.any { it == 0f || !it.isFinite() } || mean.any { !it.isFinite() }) fail("input.mean/std are not usable")
            if (!(cropFraction > 0.0 && cropFraction <= 1.0)) fail("input.crop_fraction $cropFraction is not in (0, 1]")
            if (resize != "bilinear") fail("input.resize is '$resize'; the app resizes bilinearly only")
        }
        val names = weights.map { it.name }
        if (names.toSet().size != names.size) fail("weights has duplicate names")
        with(initialValues) {
            if (!Regex("[0-9a-f]{64}").matches(sha256)) fail("initial_values.sha256 '$sha256' is not a sha256 hex digest")
            if (file.isEmpty() || '/' in file) fail("initial_values.file '$file' is not a file name")
            val trainable = weights.filter { it.kind == "trainable" }.associate { it.name to it.tensor }
            if (groups.flatten().sorted() != trainable.keys.sorted()) {
                fail("initial_values.groups ${groups.flatten().sorted()} are not the trainable weights ${trainable.keys.sorted()}")
            }
            if (trainable.values.any { it.dtype != "float32" }) fail("a trainable weight is not float32")
            for ((j, g) in groups.withIndex()) {
                val size = g.sumOf { trainable.getValue(it).elementCount }
                if (g.isEmpty() || size > length) fail("initial_values.groups[$j] holds $size values, more than length $length or none")
            }
        }
        if (optimizer.schedule != OptimizerSpec.SCHEDULE_COSINE && optimizer.schedule != OptimizerSpec.SCHEDULE_CONSTANT) {
            fail("optimizer.schedule '${optimizer.schedule}' is neither cosine nor constant")
        }
    }
}

/** Bytes per element of the dtypes LiteRT's Java API can copy; names as numpy/model.json spell them. */
fun dtypeByteSize(dtype: String, where: String = "tensor"): Int = when (dtype) {
    "float32", "int32" -> 4
    "int64" -> 8
    "int16" -> 2
    "int8", "uint8", "bool" -> 1
    else -> throw MetadataException("$where: dtype '$dtype' is not supported by the app")
}

// Small org.json helpers whose errors name the key, so a broken model.json says where it is broken.
private fun JSONObject.req(key: String, where: String): Any =
    if (has(key) && !isNull(key)) get(key) else throw MetadataException("${Contract.METADATA_FILE}: missing '$where'")

private inline fun <reified T> JSONObject.typed(key: String, where: String, what: String): T =
    req(key, where) as? T ?: throw MetadataException("${Contract.METADATA_FILE}: '$where' is not $what")

private fun JSONObject.str(key: String, where: String = key): String = typed(key, where, "a string")
private fun JSONObject.obj(key: String, where: String = key): JSONObject = typed(key, where, "an object")
private fun JSONObject.arr(key: String, where: String = key): JSONArray = typed(key, where, "a list")
private fun JSONObject.num(key: String, where: String = key): Double = typed<Number>(key, where, "a number").toDouble()
private fun JSONObject.int(key: String, where: String = key): Int {
    val n = typed<Number>(key, where, "a number")
    if (n.toDouble() != n.toInt().toDouble()) throw MetadataException("${Contract.METADATA_FILE}: '$where' is not an integer")
    return n.toInt()
}

private fun JSONObject.floats(key: String, where: String): FloatArray {
    val a = arr(key, where)
    return FloatArray(a.length()) { i ->
        (a.get(i) as? Number ?: throw MetadataException("${Contract.METADATA_FILE}: '$where' holds a non-number")).toFloat()
    }
}

private fun JSONArray.str(i: Int, where: String): String =
    get(i) as? String ?: throw MetadataException("${Contract.METADATA_FILE}: '$where[$i]' is not a string")

private fun JSONArray.arr(i: Int, where: String): JSONArray =
    get(i) as? JSONArray ?: throw MetadataException("${Contract.METADATA_FILE}: '$where[$i]' is not a list")

private fun JSONArray.obj(i: Int, where: String): JSONObject =
    get(i) as? JSONObject ?: throw MetadataException("${Contract.METADATA_FILE}: '$where[$i]' is not an object")

private fun JSONArray.int(i: Int, where: String): Int {
    val n = get(i) as? Number ?: throw MetadataException("${Contract.METADATA_FILE}: '$where[$i]' is not a number")
    if (n.toDouble() != n.toInt().toDouble()) throw MetadataException("${Contract.METADATA_FILE}: '$where[$i]' is not an integer")
    return n.toInt()
}
