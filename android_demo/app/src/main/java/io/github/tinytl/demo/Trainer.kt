package io.github.tinytl.demo

import kotlinx.coroutines.yield
import java.io.File
import kotlin.random.Random

/** A sample ready to train on: its crop (Preprocessor steps 1-4, kept for the session) and its label index. */
class PreparedSample(val source: File, val label: Int, val crop: ByteArray)

/**
 * Batch-1 training with the `train` signature: one picture, one optimizer step (done inside the model), with the
 * rollback of the Python LiteRT trainer (tinytl_tf/ondevice/trainer.py), call for call:
 *
 *  - on creation: get_weights -> `good` (every trainable tensor, optimizer slot and the step counter);
 *  - each step: train(x, y, lr = 0) -> loss, logits. `lr` <= 0 makes the model use its own schedule (the one
 *    model.json "optimizer" describes, which the app evaluates only to display it and to stop at its end);
 *    then, if the loss is finite, get_weights -> candidate; if every float in it is finite, candidate becomes
 *    `good`; otherwise (a NaN/Inf loss or weights) set_weights(good) undoes the step, which is counted.
 *
 * So one get_weights per step, and `good` is always the last accepted state: what gets saved.
 * An epoch is every sample once, shuffled, each mirrored left-right with probability 1/2. Accuracy is
 * argmax(logits) == y over the epoch's accepted steps (logits of the forward pass before the update).
 */
class Trainer(private val model: TinyTlModel, private val preprocessor: Preprocessor, private val random: Random) {

    class StepResult(val loss: Float, val correct: Boolean, val rolledBack: Boolean, val stepBefore: Long, val lr: Float)

    data class Progress(
        val epoch: Int,
        val indexInEpoch: Int,
        val epochSize: Int,
        val step: Long,
        val lastLoss: Float,
        val meanLoss: Float,
        val accuracy: Float,
        val lr: Float,
        val rolledBack: Int,
    )

    enum class End { SCHEDULE_FINISHED }

    private val x = model.newImageBuffer()
    private var good: Tensors = model.getWeights()
    private var candidate: Tensors = model.newTensors() // swapped with `good` on acceptance: no copies
    private var localStep = 0L // the step count when the model has no step counter of its own
    var rolledBack = 0
        private set

    /** The weights after the last accepted step: what a save writes. Do not modify. */
    val weights: Tensors get() = good

    /** The optimizer step counter of [weights] (the model's, else this session's count). */
    fun currentStep(): Long = model.stepOf(good) ?: localStep

    /** One training step on [sample]; see the class comment. */
    fun step(sample: PreparedSample, flip: Boolean): StepResult {
        val stepBefore = currentStep()
        val lr = model.meta.optimizer.learningRate(stepBefore)
        preprocessor.normalize(sample.crop, flip, x)
        val out = try {
            model.trainStep(x, sample.label, MODEL_SCHEDULE)
        } catch (e: Exception) {
            model.setWeights(good) // a failed invoke may have assigned some variables already
            throw e
        }
        if (out.loss.isFinite()) {
            model.getWeights(candidate)
            if (allFinite(candidate)) {
                candidate = good.also { good = candidate }
                localStep = stepBefore + 1
                return StepResult(out.loss, argmax(out.logits) == sample.label, rolledBack = false, stepBefore = stepBefore, lr = lr)
            }
        }
        model.setWeights(good)
        rolledBack++
        return StepResult(out.loss, correct = false, rolledBack = true, stepBefore = stepBefore, lr = lr)
    }

    private fun allFinite(tensors: Tensors): Boolean {
        for (w in model.meta.weights) {
            if (w.tensor.dtype != "float32") continue
            val b = tensors.getValue(w.name)
            for (i in 0 until b.capacity() / 4) if (!b.getFloat(4 * i).isFinite()) return false
        }
        return true
    }

    /**
     * Epochs until the coroutine is cancelled (the Stop button: CancellationException at the next step boundary)
     * or a cosine schedule reaches zero. Suspends between steps, so work queued on the same thread (a
     * classification, a stop) runs in between; a single step is never interleaved with anything.
     */
    suspend fun run(samples: List<PreparedSample>, onProgress: (Progress) -> Unit, onEpochEnd: suspend () -> Unit): End {
        require(samples.isNotEmpty())
        var epoch = 0
        while (true) {
            epoch++
            var seen = 0
            var correct = 0
            var lossSum = 0.0
            val order = samples.shuffled(random).map { it to random.nextBoolean() }
            for ((i, pair) in order.withIndex()) {
                yield()
                val r = step(pair.first, pair.second)
                if (!r.rolledBack) {
                    seen++
                    lossSum += r.loss
                    if (r.correct) correct++
                }
                val after = currentStep()
                onProgress(
                    Progress(
                        epoch, i + 1, order.size, after, r.loss,
                        if (seen > 0) (lossSum / seen).toFloat() else Float.NaN,
                        if (seen > 0) correct.toFloat() / seen else Float.NaN,
                        r.lr, rolledBack,
                    )
                )
                if (model.meta.optimizer.finished(after)) {
                    onEpochEnd()
                    return End.SCHEDULE_FINISHED
                }
            }
            onEpochEnd()
        }
    }

    companion object {
        /** `train`'s lr <= 0 selects the schedule built into the model (tinytl_tf/export.py). */
        const val MODEL_SCHEDULE = 0f

        fun argmax(v: FloatArray): Int {
            var best = 0
            for (i in 1 until v.size) if (v[i] > v[best]) best = i
            return best
        }
    }
}
