package jvmcheck

import io.github.tinytl.demo.Contract
import io.github.tinytl.demo.ModelException
import io.github.tinytl.demo.ModelMetadata
import io.github.tinytl.demo.MetadataException
import io.github.tinytl.demo.PreparedSample
import io.github.tinytl.demo.Preprocessor
import io.github.tinytl.demo.SignatureSpec
import io.github.tinytl.demo.TensorSpec
import io.github.tinytl.demo.Tensors
import io.github.tinytl.demo.TinyTlModel
import io.github.tinytl.demo.Trainer
import io.github.tinytl.demo.WeightStore
import kotlinx.coroutines.runBlocking
import org.tensorflow.lite.DataType
import org.tensorflow.lite.Interpreter
import org.tensorflow.lite.Tensor
import java.io.File
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.security.MessageDigest
import kotlin.random.Random

// Runs the app's own Kotlin classes on a desktop JVM: the Android and LiteRT classes are stubs (../stubs), the
// interpreter is FakeModel below. The model files (model.tflite, model.json, model.init.npz) are the ones
// ../export_assets.py wrote into "work.dir"/exported with the project's Python. Outputs for crosscheck.py go to the
// directory in system property "work.dir".

private val work = File(System.getProperty("work.dir"))
private val template = File(System.getProperty("model.json")).readText()

private fun check(c: Boolean, msg: () -> String) {
    if (!c) throw AssertionError(msg())
}

fun metadataParsing() {
    val meta = ModelMetadata.parse(template)
    check(meta.labels == listOf("cat", "dog", "bird")) { "labels ${meta.labels}" }
    check(meta.input.mean[1] == 116.28f) { "mean" }
    check(meta.signatures.keys == setOf("train", "infer", "get_weights", "set_weights", "load")) { "signatures" }
    check(meta.initialValues.groups == listOf(listOf("head__bias", "norm__gamma"), listOf("head__kernel"))) { "groups" }
    for ((bad, expected) in listOf(
        template.replace("\"batch_size\": 1", "\"batch_size\": 8") to "batch_size",
        template.replace("\"format\": \"tinytl_tf/model-v2\"", "\"format\": \"x\"") to "format",
        template.replace("\"format\": \"tinytl_tf/model-v2\"", "\"format\": \"tinytl_tf/model-v1\"") to "this app reads 'tinytl_tf/model-v2'",
        template.replace("\"initial_values\"", "\"initial\"") to "missing 'initial_values'",
        template.replace("[[\"head__bias\", \"norm__gamma\"], ", "[[\"head__bias\"], ") to "are not the trainable weights",
        template.replace("\"length\": 24", "\"length\": 20") to "more than length 20",
        template.replace("\"sha256\": \"0000", "\"sha256\": \"zz00") to "initial_values.sha256",
        template.replace("\"crop_fraction\": 0.875,", "") to "input.crop_fraction",
        template.replace("\"labels\": [\"cat\", \"dog\", \"bird\"]", "\"labels\": [\"cat\", \"dog\"]") to "num_classes",
        template.replace("\"dtype\": \"int32\"", "\"dtype\": \"complex64\"") to "complex64",
        "{" to "not valid JSON",
    )) {
        try {
            ModelMetadata.parse(bad)
            throw AssertionError("no error for $expected")
        } catch (e: MetadataException) {
            check(e.message!!.contains(expected)) { "message '${e.message}' lacks '$expected'" }
        }
    }
}

fun learningRateSchedule() {
    val opt = ModelMetadata.parse(template).optimizer // adam 3e-4 cosine over 100 steps
    check(opt.learningRate(0) == 3e-4f) { "lr(0) ${opt.learningRate(0)}" }
    check(Math.abs(opt.learningRate(50) - 1.5e-4f) < 1e-9) { "lr(50) ${opt.learningRate(50)}" }
    check(opt.learningRate(100) == 0f && opt.learningRate(500) == 0f) { "lr after the end" }
    check(opt.finished(100) && !opt.finished(99)) { "finished" }
}

fun preprocessorPureSteps() {
    val p = Preprocessor(ModelMetadata.parse(template).input)
    check(p.scaledSize(640, 480) == Pair(341, 256)) { "scaledSize ${p.scaledSize(640, 480)}" }
    check(p.scaledSize(480, 640) == Pair(256, 341)) { "scaledSize portrait" }
    check(p.cropOffsets(341, 256) == Pair(58, 16)) { "cropOffsets" }
    // Files for crosscheck.py: a crop, its normalisation with and without the flip, and a scaledSize grid.
    val rgb = ByteArray(p.cropBytes) { (it * 7).toByte() }
    File(work, "rgb.bin").writeBytes(rgb)
    val x = ByteBuffer.allocateDirect(p.cropBytes * 4)
    for ((flip, name) in listOf(false to "x_noflip.f32", true to "x_flip.f32")) {
        p.normalize(rgb, flip, x)
        File(work, name).writeBytes(ByteArray(x.capacity()).also { x.duplicate().get(it) })
    }
    File(work, "scaled_size.txt").printWriter().use { out ->
        for (size in listOf(96, 128, 160, 224, 256)) for (cf in listOf(0.875, 0.8, 1.0)) {
            val q = Preprocessor(size, cf, floatArrayOf(0f, 0f, 0f), floatArrayOf(1f, 1f, 1f))
            for (w in 1..400 step 7) for (h in listOf(1, 2, 7, 99, 256, 257, 301, 1000, 4031)) {
                val (a, b) = q.scaledSize(w, h)
                out.println("$size $cf $w $h $a $b")
            }
        }
    }
}

fun weightStoreRoundTripAndRejections() {
    val meta = ModelMetadata.parse(template)
    val store = WeightStore(File(work, "weights/trained.ttlw"))
    store.delete()
    check(store.load(meta.fingerprint, meta.weights) is WeightStore.Loaded.Missing) { "missing" }
    val tensors = Tensors()
    for ((i, w) in meta.weights.withIndex()) {
        val b = ByteBuffer.allocateDirect(w.tensor.byteSize).order(ByteOrder.nativeOrder())
        when (w.tensor.dtype) {
            "float32" -> if (w.name == "step") b.putFloat(42f) else repeat(w.tensor.elementCount.toInt()) { b.putFloat(i + it * 0.5f) }
            "int64" -> b.putLong(42L)
            "int32" -> b.putInt(42)
        }
        b.rewind()
        tensors[w.name] = b
    }
    store.save(meta.fingerprint, meta.weights, tensors)
    check(!File(work, "weights/trained.ttlw.tmp").exists()) { "temporary file left behind" }
    val ok = store.load(meta.fingerprint, meta.weights)
    check(ok is WeightStore.Loaded.Ok) { "load: ${(ok as? WeightStore.Loaded.Rejected)?.reason}" }
    for ((k, v) in (ok as WeightStore.Loaded.Ok).tensors) check(v == tensors.getValue(k).duplicate().also { it.rewind() }) { k }
    val good = store.file.readBytes()
    File(work, "good.ttlw").writeBytes(good) // for crosscheck.py

    fun rejected(bytes: ByteArray, fingerprint: String = meta.fingerprint, weights: List<io.github.tinytl.demo.WeightSpec> = meta.weights): String {
        store.file.writeBytes(bytes)
        val r = store.load(fingerprint, weights)
        check(r is WeightStore.Loaded.Rejected) { "accepted a bad file" }
        return (r as WeightStore.Loaded.Rejected).reason
    }
    check(rejected(good, fingerprint = "0".repeat(64)).contains("another model")) { "foreign" }
    check(rejected(good.copyOf(good.size - 3)).contains("truncated")) { "truncated payload" }
    check(rejected(good.copyOf(40)).contains("truncated")) { "truncated header" }
    check(rejected(good + byteArrayOf(1)).contains("trailing")) { "trailing bytes" }
    val flipped = good.copyOf().also { it[it.size - 5] = (it[it.size - 5].toInt() xor 1).toByte() }
    check(rejected(flipped).contains("CRC")) { "bit flip" }
    check(rejected("hello".toByteArray()).contains("not a weight file")) { "garbage" }
    check(rejected(ByteArray(0)).contains("truncated")) { "empty" }
    check(rejected(good, weights = meta.weights.dropLast(1)).contains("differ")) { "other tensor list" }
    val rnd = java.util.Random(1) // random damage: reported, never thrown
    repeat(3000) {
        val c = good.copyOf()
        repeat(1 + rnd.nextInt(4)) { c[rnd.nextInt(c.size)] = rnd.nextInt(256).toByte() }
        store.file.writeBytes(if (rnd.nextBoolean()) c else c.copyOf(rnd.nextInt(c.size)))
        store.load(meta.fingerprint, meta.weights)
    }
    store.delete()
}

/**
 * An in-memory stand-in for the exported model (tinytl_tf/export.py's semantics): every variable starts at zero;
 * load(values, group) assigns group `group`'s tensors from the front of `values` (and keeps a copy in [loaded]);
 * train adds the learning rate (lr > 0, else the cosine schedule at the float32 step counter) to bias[y] and counts
 * the step; set_weights returns the step counter. Logs every call. [poison] makes the next train step diverge.
 */
class FakeModel(private val meta: ModelMetadata, private val sigs: Map<String, SignatureSpec> = meta.signatures) : Interpreter.Backend {
    enum class Poison { NONE, NAN_LOSS, NAN_WEIGHTS }
    val log = mutableListOf<String>()
    val fedLr = mutableListOf<Float>()
    var poison = Poison.NONE
    val loaded = mutableListOf<ByteArray>()
    private val w = meta.weights.associate { it.name to ByteBuffer.allocate(it.tensor.byteSize).order(ByteOrder.LITTLE_ENDIAN) }

    private fun tensor(spec: TensorSpec) = object : Tensor {
        override fun dataType() = DataType.valueOf(spec.dtype.uppercase())
        override fun shape() = spec.shape.toIntArray()
        override fun numBytes() = spec.byteSize
        override fun name() = spec.name
    }

    override fun getSignatureKeys() = sigs.keys.toTypedArray()
    override fun getSignatureInputs(key: String) = sigs.getValue(key).inputs.keys.toTypedArray()
    override fun getSignatureOutputs(key: String) = sigs.getValue(key).outputs.keys.toTypedArray()
    override fun getInputTensorFromSignature(n: String, k: String) = tensor(sigs.getValue(k).inputs.getValue(n))
    override fun getOutputTensorFromSignature(n: String, k: String) = tensor(sigs.getValue(k).outputs.getValue(n))
    private fun bias(i: Int) = w.getValue("head__bias").getFloat(4 * i)

    override fun runSignature(inputs: Map<String, Any>, outputs: Map<String, Any>, key: String) {
        log += "$key(${inputs.keys.sorted().joinToString()}) -> (${outputs.keys.sorted().joinToString()})"
        val spec = sigs.getValue(key)
        for ((n, v) in inputs) {
            val b = v as ByteBuffer
            check(n in spec.inputs && b.isDirect && b.order() == ByteOrder.nativeOrder() && b.capacity() == spec.inputs.getValue(n).byteSize) { "input $n" }
        }
        check(inputs.keys == spec.inputs.keys) { "$key fed ${inputs.keys}, takes ${spec.inputs.keys}" }
        for ((n, v) in outputs) check(n in spec.outputs && (v as ByteBuffer).position() == 0) { "output $n" }
        fun out(n: String) = outputs.getValue(n) as ByteBuffer
        fun inp(n: String) = inputs.getValue(n) as ByteBuffer
        when (key) {
            "load" -> {
                val group = inp("group").getInt(0)
                val values = inp("values").duplicate().order(ByteOrder.nativeOrder())
                loaded += ByteArray(values.capacity()).also { values.duplicate().get(it) }
                for (n in meta.initialValues.groups[group]) {
                    val b = w.getValue(n)
                    repeat(b.capacity() / 4) { b.putFloat(4 * it, values.getFloat()) }
                }
                out("group").putInt(0, group)
            }
            "get_weights" -> for ((n, b) in w) out(n).put(b.array())
            "set_weights" -> {
                for ((n, b) in w) {
                    val a = ByteArray(b.capacity()).also { inp(n).duplicate().get(it) }
                    b.clear()
                    b.put(a)
                }
                outputs["step"]?.let { (it as ByteBuffer).putFloat(0, w.getValue("step").getFloat(0)) }
            }
            "train" -> {
                val y = inp("y").getInt(0)
                val fed = inp("lr").getFloat(0)
                fedLr += fed
                val step = w.getValue("step").getFloat(0)
                val lr = if (fed > 0f) fed else meta.optimizer.learningRate(step.toLong())
                for (i in 0 until 3) out("logits").putFloat(4 * i, bias(i))
                w.getValue("head__bias").putFloat(4 * y, bias(y) + lr)
                w.getValue("step").putFloat(0, step + 1)
                out("loss").putFloat(0, 1f / (step + 1))
                when (poison) { // a diverging step: garbage in the variables, with or without a NaN loss
                    Poison.NAN_LOSS -> { out("loss").putFloat(0, Float.NaN); w.getValue("head__kernel").putFloat(0, Float.NaN) }
                    Poison.NAN_WEIGHTS -> w.getValue("head__kernel").putFloat(4, Float.POSITIVE_INFINITY)
                    Poison.NONE -> Unit
                }
                poison = Poison.NONE
            }
            "infer" -> {
                val e = FloatArray(3) { Math.exp(bias(it).toDouble()).toFloat() }
                for (i in 0 until 3) {
                    out("logits").putFloat(4 * i, bias(i))
                    out("probabilities").putFloat(4 * i, e[i] / e.sum())
                }
            }
        }
    }
}

private const val GET = "get_weights(unused) -> (head__bias, head__bias__m, head__kernel, norm__gamma, step)"
private const val TRAIN = "train(lr, x, y) -> (logits, loss)"
private const val SET = "set_weights(head__bias, head__bias__m, head__kernel, norm__gamma, step) -> (step)"
private const val LOAD = "load(group, values) -> (group)"

/** Fresh app assets: the files export_assets.py wrote. Returns the context and model.json's text. */
private fun assets(): Pair<android.app.Application, String> {
    val dir = File(work, "assets")
    dir.deleteRecursively()
    File(work, "exported").copyRecursively(dir)
    System.setProperty("assets.dir", dir.path)
    return android.app.Application() to File(dir, "model.json").readText()
}

private fun sha256(bytes: ByteArray) = MessageDigest.getInstance("SHA-256").digest(bytes).joinToString("") { "%02x".format(it) }

/** The app's call sequence (open, train with a NaN rollback, infer, save, restore) against FakeModel. */
fun replayCallSequence() {
    val (ctx, text) = assets()
    val meta = ModelMetadata.parse(text)
    val fake = FakeModel(meta)
    Interpreter.backend = fake
    val model = TinyTlModel.open(ctx, 2)
    // Opening loads the initial values, group by group, before anything else runs; `load` receives exactly what
    // Python's initial_values.group_values makes of the exported file.
    check(fake.log.takeLast(2) == listOf(LOAD, LOAD) && fake.log.none { it.startsWith("train") || it.startsWith("infer") }) { "open calls ${fake.log}" }
    check(fake.loaded.fold(ByteArray(0)) { a, b -> a + b }.contentEquals(File(work, "groups.f32").readBytes())) { "load inputs differ from Python's group_values" }
    val start = model.getWeights()
    check(start.getValue("head__kernel").getFloat(0) != 0f && start.getValue("norm__gamma").getFloat(16) != 0f) { "trainables still zero" }
    check(start.getValue("head__bias__m").getFloat(0) == 0f && model.stepOf(start) == 0L) { "slots and step start at zero" }
    val pre = Preprocessor(meta.input)
    fake.log.clear()
    val trainer = Trainer(model, pre, Random(1))
    check(fake.log == listOf(GET)) { "creation calls ${fake.log}" }
    val sample = { label: Int -> PreparedSample(File("s$label"), label, ByteArray(pre.cropBytes) { (it % 251).toByte() }) }

    fake.log.clear()
    val r1 = trainer.step(sample(1), false)
    check(!r1.rolledBack && r1.stepBefore == 0L && r1.lr == meta.optimizer.learningRate(0)) { "first step" }
    check(fake.log == listOf(TRAIN, GET)) { "step calls ${fake.log}" }
    check(fake.fedLr.single() == 0f) { "lr fed ${fake.fedLr}: the app must leave the schedule to the model" }

    for (poison in listOf(FakeModel.Poison.NAN_LOSS, FakeModel.Poison.NAN_WEIGHTS)) {
        val before = model.getWeights().mapValues { it.value.duplicate() }
        fake.poison = poison
        fake.log.clear()
        val r = trainer.step(sample(2), true)
        check(r.rolledBack) { "$poison not rolled back" }
        val expected = if (poison == FakeModel.Poison.NAN_LOSS) listOf(TRAIN, SET) else listOf(TRAIN, GET, SET)
        check(fake.log == expected) { "$poison calls ${fake.log}" }
        val after = model.getWeights()
        for ((k, v) in before) check(v == after.getValue(k)) { "$poison: rollback of $k" }
    }
    check(trainer.rolledBack == 2) { "rolled back ${trainer.rolledBack}" }

    val r3 = trainer.step(sample(0), false)
    check(r3.stepBefore == 1L && r3.lr == meta.optimizer.learningRate(1)) { "the displayed lr follows the step counter" }
    fake.log.clear()
    val pred = model.infer(model.newImageBuffer())
    check(fake.log == listOf("infer(x) -> (logits, probabilities)")) { "infer calls ${fake.log}" }
    check(Math.abs(pred.probabilities.sum() - 1f) < 1e-5) { "probabilities" }

    var steps = 0
    var epochs = 0
    val end = runBlocking { trainer.run(listOf(sample(0), sample(1), sample(2)), { steps++ }, { epochs++ }) }
    check(end == Trainer.End.SCHEDULE_FINISHED && model.stepOf(model.getWeights()) == 100L) { "run() stops at the schedule's end" }
    check(steps == 98) { "steps $steps" }

    val store = WeightStore(File(work, "replay/trained.ttlw"))
    val saved = trainer.weights
    store.save(meta.fingerprint, meta.weights, saved)
    Interpreter.backend = FakeModel(meta)
    val fresh = TinyTlModel.open(ctx, 2)
    check(fresh.getWeights().getValue("head__kernel") == start.getValue("head__kernel")) { "a fresh model starts from the initial values" }
    fresh.setWeights((store.load(meta.fingerprint, meta.weights) as WeightStore.Loaded.Ok).tensors)
    check(fresh.stepOf(fresh.getWeights()) == 100L) { "restored step counter" }
    val back = fresh.getWeights()
    for ((k, v) in saved) check(v.duplicate().also { it.rewind() } == back.getValue(k)) { "restore of $k" }
}

fun validationErrors() {
    val (ctx, text) = assets()
    val meta = ModelMetadata.parse(text)
    val dir = File(System.getProperty("assets.dir"))
    fun expectError(json: String, sigs: Map<String, SignatureSpec>, wanted: String) {
        File(dir, "model.json").writeText(json)
        Interpreter.backend = FakeModel(meta, sigs)
        try {
            TinyTlModel.open(ctx, 1)
            throw AssertionError("opened; wanted '$wanted'")
        } catch (e: ModelException) {
            check(e.message!!.contains(wanted)) { "'${e.message}' lacks '$wanted'" }
        }
    }
    val s = meta.signatures
    expectError(text.replace("\"inputs\": {\"unused\": {\"shape\": [], \"dtype\": \"float32\"}}", "\"inputs\": {}"), s, "refuses an empty input map")
    expectError(text, s - "infer", "signature 'infer' is in model.json but not in the model")
    val int64Label = SignatureSpec(s.getValue("train").inputs + ("y" to TensorSpec("y", listOf(1), "int64")), s.getValue("train").outputs)
    expectError(text, s + ("train" to int64Label), "train input y")
    expectError(text.replace(meta.fingerprint, "f".repeat(64)), s, "is not the model model.json describes")
    expectError(text.replace("\"tflite\": \"model.tflite\"", "\"tflite\": \"float.tflite\""), s, "describes float.tflite, not model.tflite")
    check(TinyTlModel.metadataFileFor(Contract.MODEL_FILE) == Contract.METADATA_FILE) { "metadata naming rule" }
    expectError(text.replace("\"probabilities\": {\"shape\": [1, 3]", "\"probs\": {\"shape\": [1, 3]"), s, "infer has no tensor 'probabilities'")
    File(dir, "model.json").delete()
    try {
        TinyTlModel.open(ctx, 1)
        throw AssertionError("opened without model.json")
    } catch (e: ModelException) {
        check(e.message!!.startsWith("No model.json")) { e.message!! }
    }
}

/** TinyTlModel.open refuses missing, truncated, bit-flipped, foreign or incomplete initial values, by message. */
fun initialValuesRefusals() {
    val (ctx, text) = assets()
    val meta = ModelMetadata.parse(text)
    val dir = File(System.getProperty("assets.dir"))
    val init = File(dir, meta.initialValues.file)
    val good = init.readBytes()
    fun expectError(bytes: ByteArray?, wanted: String, json: String = text) {
        if (bytes == null) init.delete() else init.writeBytes(bytes)
        File(dir, "model.json").writeText(json)
        val fake = FakeModel(ModelMetadata.parse(json)) // a model that fits the edited model.json
        Interpreter.backend = fake
        try {
            TinyTlModel.open(ctx, 1)
            throw AssertionError("opened; wanted '$wanted'")
        } catch (e: ModelException) {
            check(e.message!!.contains(wanted)) { "'${e.message}' lacks '$wanted'" }
        }
        check(fake.log.none { it.startsWith("load") }) { "loaded before refusing: ${fake.log}" }
    }
    fun withSha(bytes: ByteArray) = text.replace(meta.initialValues.sha256, sha256(bytes))
    expectError(null, "No assets/model.init.npz: the model's initial values are missing")
    expectError(good.copyOf(good.size - 10), "is not the initial-values file exported with this model")
    val flipped = good.copyOf().also { it[it.size / 2] = (it[it.size / 2].toInt() xor 4).toByte() }
    expectError(flipped, "is not the initial-values file exported with this model")
    val foreign = File(work, "foreign.init.npz").readBytes()
    expectError(foreign, "is not the initial-values file exported with this model")
    expectError(foreign, "holds the initial values of another model", withSha(foreign))
    val lacking = File(work, "lacking.init.npz").readBytes()
    expectError(lacking, "lacks the tensors [norm__gamma]", withSha(lacking))
    val garbage = "hello".toByteArray()
    expectError(garbage, "is unreadable", withSha(garbage))
    val other = text.replace("\"norm__gamma\", \"shape\": [5]", "\"norm__gamma\", \"shape\": [6]")
        .replace("\"norm__gamma\": {\"shape\": [5]", "\"norm__gamma\": {\"shape\": [6]")
    expectError(good, "holds norm__gamma as <f4[5]; model.json says norm__gamma: float32[6]", other)
    expectError(good, "load tensor values: float32[24]; the app needs values: float32[30]", text.replace("\"length\": 24", "\"length\": 30"))
    // Damage that keeps model.json's sha256 (as an exporter bug could): reported, never thrown as anything else.
    val rnd = java.util.Random(2)
    repeat(300) {
        val c = good.copyOf()
        repeat(1 + rnd.nextInt(4)) { c[rnd.nextInt(c.size)] = rnd.nextInt(256).toByte() }
        val bytes = if (rnd.nextBoolean()) c else c.copyOf(rnd.nextInt(c.size))
        init.writeBytes(bytes)
        File(dir, "model.json").writeText(withSha(bytes))
        Interpreter.backend = FakeModel(meta)
        try {
            TinyTlModel.open(ctx, 1).close()
        } catch (e: ModelException) {
            // refused with a message: what the app shows
        }
    }
}

fun main() {
    val checks = listOf(
        ::metadataParsing, ::learningRateSchedule, ::preprocessorPureSteps, ::weightStoreRoundTripAndRejections,
        ::replayCallSequence, ::validationErrors, ::initialValuesRefusals,
    )
    var failed = 0
    for (c in checks) {
        try {
            c()
            println("PASS ${c.name}")
        } catch (e: Throwable) {
            failed++
            println("FAIL ${c.name}: $e")
        }
    }
    println("${checks.size - failed} passed, $failed failed")
    if (failed > 0) kotlin.system.exitProcess(1)
}
