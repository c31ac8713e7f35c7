package io.github.tinytl.demo

import android.content.Context
import org.tensorflow.lite.Interpreter
import org.tensorflow.lite.Tensor
import java.io.Closeable
import java.io.File
import java.io.FileInputStream
import java.io.FileNotFoundException
import java.io.IOException
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.MappedByteBuffer
import java.nio.channels.FileChannel
import java.security.MessageDigest

/** The model cannot be used; the message says what is wrong and what to do, and is shown to the user as is. */
class ModelException(message: String, cause: Throwable? = null) : Exception(message, cause)

/** Named tensors in model.json "weights" order, each a direct native-order buffer holding exactly its bytes. */
typealias Tensors = LinkedHashMap<String, ByteBuffer>

/**
 * The exported training model behind its signatures: `load` assigns the initial values when it is opened (its
 * variables start at zero, see [InitialValues]), `train` does one optimizer step in the model, `infer` classifies,
 * `get_weights` / `set_weights` move every trainable tensor, optimizer slot and the step counter in and out by name.
 * Not thread-safe, like the interpreter: call it from one thread.
 */
class TinyTlModel private constructor(
    val meta: ModelMetadata,
    // The interpreter reads the model from this mapping for its whole life: keep a reference.
    @Suppress("unused") private val modelBuffer: MappedByteBuffer,
    private val interpreter: Interpreter,
) : Closeable {

    class TrainOutput(val loss: Float, val logits: FloatArray)
    class Prediction(val logits: FloatArray, val probabilities: FloatArray)

    private val train = meta.signatures.getValue(Contract.SIGNATURE_TRAIN)
    private val infer = meta.signatures.getValue(Contract.SIGNATURE_INFER)

    private val stepSpec: WeightSpec? = meta.weights.firstOrNull { it.name == Contract.STEP_TENSOR }

    // Buffers reused by every call, so a training step allocates nothing but its logits array.
    private val label = tensorBuffer(train.inputs.getValue(Contract.INPUT_LABEL))
    private val learningRate = train.inputs[Contract.INPUT_LEARNING_RATE]?.let(::tensorBuffer)
    private val loss = tensorBuffer(train.outputs.getValue(Contract.OUTPUT_LOSS))
    private val trainLogits = tensorBuffer(train.outputs.getValue(Contract.OUTPUT_LOGITS))
    private val inferLogits = tensorBuffer(infer.outputs.getValue(Contract.OUTPUT_LOGITS))
    private val probabilities = tensorBuffer(infer.outputs.getValue(Contract.OUTPUT_PROBABILITIES))

    // LiteRT's Java Interpreter.runSignature refuses an empty input map, so an exporter has to give get_weights at
    // least one placeholder input; whatever model.json lists there is fed zeros.
    private val getWeightsInputs: Map<String, ByteBuffer> =
        meta.signatures.getValue(Contract.SIGNATURE_GET_WEIGHTS).inputs.mapValues { tensorBuffer(it.value) }

    // set_weights may have a placeholder output (a tf.function must return something to convert); read and ignored.
    private val setWeightsOutputs: Map<String, ByteBuffer> =
        meta.signatures.getValue(Contract.SIGNATURE_SET_WEIGHTS).outputs.mapValues { tensorBuffer(it.value) }

    /** A buffer for `x`, to be filled by [Preprocessor.normalize]. */
    fun newImageBuffer(): ByteBuffer = tensorBuffer(train.inputs.getValue(Contract.INPUT_IMAGE))

    /** Empty buffers for every weight tensor, e.g. to receive [getWeights] over and over without allocating. */
    fun newTensors(): Tensors = meta.weights.associateTo(Tensors()) { it.name to tensorBuffer(it.tensor) }

    /** One optimizer step on one labelled picture; [lr] <= 0: the model's own schedule (fed only if `train` takes lr). */
    fun trainStep(x: ByteBuffer, y: Int, lr: Float): TrainOutput {
        require(y in 0 until meta.numClasses) { "label $y out of range" }
        label.putInt(0, y)
        val inputs = hashMapOf(Contract.INPUT_IMAGE to x, Contract.INPUT_LABEL to label)
        if (learningRate != null) {
            learningRate.putFloat(0, lr)
            inputs[Contract.INPUT_LEARNING_RATE] = learningRate
        }
        run(Contract.SIGNATURE_TRAIN, inputs, mapOf(Contract.OUTPUT_LOSS to loss, Contract.OUTPUT_LOGITS to trainLogits))
        return TrainOutput(loss.getFloat(0), floats(trainLogits))
    }

    fun infer(x: ByteBuffer): Prediction {
        run(
            Contract.SIGNATURE_INFER,
            mapOf(Contract.INPUT_IMAGE to x),
            mapOf(Contract.OUTPUT_LOGITS to inferLogits, Contract.OUTPUT_PROBABILITIES to probabilities),
        )
        return Prediction(floats(inferLogits), floats(probabilities))
    }

    /** Every weight tensor, copied out of the model into [into] (or new buffers). */
    fun getWeights(into: Tensors? = null): Tensors {
        val out = into ?: newTensors()
        run(Contract.SIGNATURE_GET_WEIGHTS, getWeightsInputs, out)
        return out
    }

    /** Overwrites every weight tensor with [tensors] (all of them, as [getWeights] returns them). */
    fun setWeights(tensors: Map<String, ByteBuffer>) {
        for (w in meta.weights) {
            val b = tensors[w.name] ?: throw IllegalArgumentException("tensor ${w.name} missing")
            require(b.capacity() == w.tensor.byteSize) { "tensor ${w.name} has ${b.capacity()} bytes, expected ${w.tensor.byteSize}" }
        }
        require(tensors.size == meta.weights.size) { "unexpected tensors: ${tensors.keys - meta.weights.map { it.name }.toSet()}" }
        run(Contract.SIGNATURE_SET_WEIGHTS, tensors, setWeightsOutputs)
    }

    /** The optimizer's step counter in [tensors], if the model has one (the weight named [Contract.STEP_TENSOR]). */
    fun stepOf(tensors: Map<String, ByteBuffer>): Long? {
        val spec = stepSpec ?: return null
        val b = tensors[spec.name] ?: return null
        return when (spec.tensor.dtype) {
            "int64" -> b.getLong(0)
            "int32" -> b.getInt(0).toLong()
            "float32" -> b.getFloat(0).toLong()
            else -> null
        }
    }

    override fun close() = interpreter.close()

    /**
     * Assigns [values] group by group with `load`; its buffers are local, so once loaded nothing of them is kept.
     * An error here may leave some groups assigned and others at zero: the caller closes the model.
     */
    private fun loadInitialValues(values: InitialValues) {
        val load = meta.signatures.getValue(Contract.SIGNATURE_LOAD)
        val groupValues = tensorBuffer(load.inputs.getValue(Contract.INPUT_LOAD_VALUES))
        val group = tensorBuffer(load.inputs.getValue(Contract.INPUT_LOAD_GROUP))
        val outputs = meta.signatures.getValue(Contract.SIGNATURE_LOAD).outputs.mapValues { tensorBuffer(it.value) }
        for (j in meta.initialValues.groups.indices) {
            values.fill(j, groupValues)
            group.putInt(0, j)
            run(Contract.SIGNATURE_LOAD, mapOf(Contract.INPUT_LOAD_VALUES to groupValues, Contract.INPUT_LOAD_GROUP to group), outputs)
        }
    }

    private fun run(signature: String, inputs: Map<String, ByteBuffer>, outputs: Map<String, ByteBuffer>) {
        for (b in inputs.values) b.rewind()
        for (b in outputs.values) b.clear()
        interpreter.runSignature(HashMap<String, Any>(inputs), HashMap<String, Any>(outputs), signature)
        for (b in outputs.values) b.rewind()
    }

    companion object {
        /**
         * Loads [Contract.MODEL_FILE] and its metadata (model.json: the exporter names the metadata of X.tflite
         * X.json, [metadataFileFor]) from the app's assets, checks that the metadata describes that file (name and
         * fingerprint) and that the interpreter has every signature and tensor it lists (and the app needs), then
         * loads the initial values beside it (model.json "initial_values", checked by [InitialValues]) before
         * anything trains or infers, or throws [ModelException].
         */
        fun open(context: Context, numThreads: Int): TinyTlModel {
            val meta = try {
                ModelMetadata.parse(context.assets.open(metadataFileFor(Contract.MODEL_FILE)).bufferedReader().use { it.readText() })
            } catch (e: FileNotFoundException) {
                throw ModelException("No ${Contract.METADATA_FILE} in the app's assets. $WHERE_TO_PUT_IT", e)
            } catch (e: MetadataException) {
                throw ModelException(e.message ?: "bad ${Contract.METADATA_FILE}", e)
            }
            if (meta.tflite != Contract.MODEL_FILE) {
                throw ModelException(
                    "${Contract.METADATA_FILE} describes ${meta.tflite}, not ${Contract.MODEL_FILE}. $WHERE_TO_PUT_IT"
                )
            }
            val buffer = try {
                mapAsset(context, meta.tflite)
            } catch (e: IOException) {
                throw ModelException("Cannot map assets/${meta.tflite} (${e.message}). $WHERE_TO_PUT_IT", e)
            }
            val digest = sha256Hex(buffer)
            if (digest != meta.fingerprint) {
                throw ModelException(
                    "assets/${meta.tflite} is not the model ${Contract.METADATA_FILE} describes: its sha256 is " +
                        "$digest, ${Contract.METADATA_FILE} says ${meta.fingerprint}. Copy both files from the same export."
                )
            }
            val interpreter = try {
                Interpreter(buffer, Interpreter.Options().setNumThreads(numThreads))
            } catch (e: Exception) {
                throw ModelException("LiteRT cannot load assets/${meta.tflite}: ${e.message}", e)
            }
            val problems = try {
                validate(meta, interpreter)
            } catch (e: Exception) {
                listOf("inspecting the interpreter failed: $e")
            }
            if (problems.isNotEmpty()) {
                interpreter.close()
                throw ModelException(
                    "assets/${meta.tflite} and ${Contract.METADATA_FILE} do not fit this app:\n" +
                        problems.joinToString("\n") { "• $it" }
                )
            }
            val model = TinyTlModel(meta, buffer, interpreter)
            try {
                initialValuesAsset(context, meta).use(model::loadInitialValues)
            } catch (e: Exception) {
                model.close()
                throw e as? ModelException
                    ?: ModelException("assets/${meta.initialValues.file} is unreadable (${e.message ?: e.javaClass.simpleName})", e)
            }
            return model
        }

        /** The checked initial values, read from a copy of the asset in the cache (a zip is read by entry). */
        private fun initialValuesAsset(context: Context, meta: ModelMetadata): InitialValues {
            val name = meta.initialValues.file
            val copy = File.createTempFile("initial-values", ".npz", context.cacheDir)
            try {
                val input = try {
                    context.assets.open(name)
                } catch (e: FileNotFoundException) {
                    throw ModelException("No assets/$name: the model's initial values are missing. $WHERE_TO_PUT_IT", e)
                }
                return InitialValues.open(input, copy, name, meta.initialValues, meta.fingerprint, meta.weights)
            } finally {
                copy.delete() // the open zip keeps reading it (unlinked on Linux) until closed
            }
        }

        private const val WHERE_TO_PUT_IT =
            "Export with `python export/to_tflite.py --out OUT/model.tflite`, copy OUT/model.tflite, OUT/model.json " +
                "and OUT/model.init.npz into app/src/main/assets/ and rebuild."

        /** The exporter's naming rule (contract.model_json_path): X.tflite is described by X.json beside it. */
        fun metadataFileFor(modelFile: String): String =
            modelFile.substringBeforeLast('.') + Contract.METADATA_SUFFIX

        private fun mapAsset(context: Context, name: String): MappedByteBuffer =
            context.assets.openFd(name).use { fd ->
                FileInputStream(fd.fileDescriptor).channel.use {
                    it.map(FileChannel.MapMode.READ_ONLY, fd.startOffset, fd.declaredLength)
                }
            }

        private fun sha256Hex(buffer: ByteBuffer): String {
            val md = MessageDigest.getInstance("SHA-256")
            md.update(buffer.duplicate())
            return md.digest().joinToString("") { "%02x".format(it.toInt() and 0xFF) }
        }

        private fun tensorBuffer(spec: TensorSpec): ByteBuffer =
            ByteBuffer.allocateDirect(spec.byteSize).order(ByteOrder.nativeOrder())

        private fun floats(b: ByteBuffer) = FloatArray(b.capacity() / 4) { b.getFloat(4 * it) }

        /**
         * Every problem that would stop the app, in words. Two parts: (1) each signature in model.json exists in
         * the interpreter with exactly the listed input and output names, shapes and dtypes; (2) the tensors the
         * app uses (Contract names) are there with the shapes model.json's facts imply.
         */
        internal fun validate(meta: ModelMetadata, interpreter: Interpreter): List<String> {
            val problems = mutableListOf<String>()
            val keys = interpreter.signatureKeys.toSet()
            for ((sig, spec) in meta.signatures) {
                if (sig !in keys) {
                    problems += "signature '$sig' is in ${Contract.METADATA_FILE} but not in the model (it has ${keys.sorted()})"
                    continue
                }
                val inputs = interpreter.getSignatureInputs(sig).toSet()
                val outputs = interpreter.getSignatureOutputs(sig).toSet()
                compareNames(problems, "$sig inputs", spec.inputs.keys, inputs)
                compareNames(problems, "$sig outputs", spec.outputs.keys, outputs)
                for (t in spec.inputs.values.filter { it.name in inputs }) {
                    compareTensor(problems, "$sig input", t, interpreter.getInputTensorFromSignature(t.name, sig))
                }
                for (t in spec.outputs.values.filter { it.name in outputs }) {
                    compareTensor(problems, "$sig output", t, interpreter.getOutputTensorFromSignature(t.name, sig))
                }
            }

            val used = listOf(
                Contract.SIGNATURE_TRAIN, Contract.SIGNATURE_INFER, Contract.SIGNATURE_GET_WEIGHTS, Contract.SIGNATURE_SET_WEIGHTS,
                Contract.SIGNATURE_LOAD,
            )
            val missing = used.filter { it !in meta.signatures }
            for (sig in missing) problems += "${Contract.METADATA_FILE} has no '$sig' signature"
            if (missing.isNotEmpty()) return problems // the checks below need all five
            for (sig in used.filter { meta.signatures.getValue(it).inputs.isEmpty() }) {
                problems += "'$sig' takes no input, and LiteRT's Java Interpreter.runSignature refuses an empty " +
                    "input map; the exporter must give it an input (a placeholder is fine: the app feeds it zeros)"
            }

            val batch = meta.batchSize
            val x = TensorSpec(Contract.INPUT_IMAGE, listOf(batch, meta.input.height, meta.input.width, meta.input.channels), "float32")
            val classes = listOf(batch, meta.numClasses)
            val train = meta.signatures.getValue(Contract.SIGNATURE_TRAIN)
            expect(problems, Contract.SIGNATURE_TRAIN, train.inputs, x)
            expect(problems, Contract.SIGNATURE_TRAIN, train.inputs, TensorSpec(Contract.INPUT_LABEL, listOf(batch), "int32"))
            if (Contract.INPUT_LEARNING_RATE in train.inputs) {
                expect(problems, Contract.SIGNATURE_TRAIN, train.inputs, TensorSpec(Contract.INPUT_LEARNING_RATE, listOf(), "float32"))
            }
            val known = setOf(Contract.INPUT_IMAGE, Contract.INPUT_LABEL, Contract.INPUT_LEARNING_RATE)
            for (name in train.inputs.keys - known) problems += "${Contract.SIGNATURE_TRAIN} input '$name' is not one the app knows how to feed"
            expect(problems, Contract.SIGNATURE_TRAIN, train.outputs, TensorSpec(Contract.OUTPUT_LOSS, listOf(), "float32"))
            expect(problems, Contract.SIGNATURE_TRAIN, train.outputs, TensorSpec(Contract.OUTPUT_LOGITS, classes, "float32"))

            val infer = meta.signatures.getValue(Contract.SIGNATURE_INFER)
            expect(problems, Contract.SIGNATURE_INFER, infer.inputs, x)
            for (name in infer.inputs.keys - setOf(Contract.INPUT_IMAGE)) problems += "${Contract.SIGNATURE_INFER} input '$name' is not one the app knows how to feed"
            expect(problems, Contract.SIGNATURE_INFER, infer.outputs, TensorSpec(Contract.OUTPUT_LOGITS, classes, "float32"))
            expect(problems, Contract.SIGNATURE_INFER, infer.outputs, TensorSpec(Contract.OUTPUT_PROBABILITIES, classes, "float32"))

            val load = meta.signatures.getValue(Contract.SIGNATURE_LOAD)
            expect(problems, Contract.SIGNATURE_LOAD, load.inputs, TensorSpec(Contract.INPUT_LOAD_VALUES, listOf(meta.initialValues.length), "float32"))
            expect(problems, Contract.SIGNATURE_LOAD, load.inputs, TensorSpec(Contract.INPUT_LOAD_GROUP, listOf(), "int32"))
            for (name in load.inputs.keys - setOf(Contract.INPUT_LOAD_VALUES, Contract.INPUT_LOAD_GROUP)) problems += "${Contract.SIGNATURE_LOAD} input '$name' is not one the app knows how to feed"

            // get_weights returns, and set_weights takes, exactly model.json's weight list.
            val weights = meta.weights.associate { it.name to it.tensor }
            val getOut = meta.signatures.getValue(Contract.SIGNATURE_GET_WEIGHTS).outputs
            val setIn = meta.signatures.getValue(Contract.SIGNATURE_SET_WEIGHTS).inputs
            compareNames(problems, "${Contract.SIGNATURE_GET_WEIGHTS} outputs vs weights", weights.keys, getOut.keys)
            compareNames(problems, "${Contract.SIGNATURE_SET_WEIGHTS} inputs vs weights", weights.keys, setIn.keys)
            for (w in weights.values) {
                getOut[w.name]?.let { if (it != w) problems += "${Contract.SIGNATURE_GET_WEIGHTS} output $it differs from weights entry $w" }
                setIn[w.name]?.let { if (it != w) problems += "${Contract.SIGNATURE_SET_WEIGHTS} input $it differs from weights entry $w" }
            }
            if (meta.weights.isEmpty()) problems += "${Contract.METADATA_FILE} lists no weights: nothing to train or save"
            weights[Contract.STEP_TENSOR]?.let { if (it.shape.isNotEmpty()) problems += "weight '${Contract.STEP_TENSOR}' is not a scalar" }
            return problems
        }

        private fun compareNames(problems: MutableList<String>, what: String, declared: Set<String>, actual: Set<String>) {
            if (declared != actual) {
                problems += "$what: model.json has ${declared.sorted()}, the model has ${actual.sorted()}"
            }
        }

        private fun compareTensor(problems: MutableList<String>, what: String, declared: TensorSpec, tensor: Tensor) {
            val actual = TensorSpec(declared.name, tensor.shape().toList(), tensor.dataType().name.lowercase())
            if (actual != declared) problems += "$what ${declared.name}: model.json says $declared, the model has $actual"
        }

        private fun expect(problems: MutableList<String>, sig: String, tensors: Map<String, TensorSpec>, wanted: TensorSpec) {
            val t = tensors[wanted.name]
            if (t == null) problems += "$sig has no tensor '${wanted.name}' (the app needs $wanted)"
            else if (t != wanted) problems += "$sig tensor $t; the app needs $wanted"
        }
    }
}
