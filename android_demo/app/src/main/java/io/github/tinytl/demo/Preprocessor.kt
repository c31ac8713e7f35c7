package io.github.tinytl.demo

import android.graphics.Bitmap
import android.graphics.BitmapFactory
import android.graphics.Canvas
import android.graphics.Color
import android.graphics.Matrix
import androidx.exifinterface.media.ExifInterface
import java.io.File
import java.io.IOException
import java.nio.ByteBuffer
import java.nio.ByteOrder

/**
 * Picture file -> the model's `x` (float32 [1, size, size, 3], NHWC), mirroring tinytl_tf.imagefiles's evaluation path
 * (load_rgb -> eval_transform -> normalize). One function per step, in this order, so a numpy replica reads
 * line by line:
 *
 *  1. [decode]: BitmapFactory to ARGB_8888 (halving with inSampleSize only above [MAX_DECODE_PIXELS]), then the
 *     EXIF orientation as an exact pixel permutation (as PIL's ImageOps.exif_transpose), then any alpha composited
 *     over opaque white (imagefiles.ALPHA_BACKGROUND);
 *  2. [scaledSize]: shorter side S = rint(size / cropFraction), longer side max(S, rint(long * S / short)), where
 *     rint rounds half to even like Python's round() (ties cannot occur for S with cropFraction 0.875);
 *  3. [scale]: while the picture is at least twice the target in both directions, halve it
 *     (createScaledBitmap(w / 2, h / 2, filter = true): a 2x2 average for even sizes), then one
 *     createScaledBitmap(targetW, targetH, filter = true) bilinear resize. The halving stands in for the antialiasing
 *     that PIL's BILINEAR does when shrinking a photo many times over, which plain bilinear sampling would alias;
 *  4. [cropOffsets]: centre crop at left = (W - size) / 2, top = (H - size) / 2, integer division;
 *  5. [normalize]: per pixel, row-major, channels R, G, B: (p - mean[c]) / std[c] in float32, optionally mirrored
 *     left-right (the training augmentation: column x reads source column size - 1 - x).
 *
 * Steps 1-4 produce the crop as RGB bytes ([loadCrop]); step 5 runs per use, so the training loop keeps crops and
 * redoes only the cheap normalisation. Steps 2, 4 and 5 are plain Kotlin with no Android types.
 */
class Preprocessor(val size: Int, val cropFraction: Double, val mean: FloatArray, val std: FloatArray) {

    constructor(input: InputSpec) : this(input.height, input.cropFraction, input.mean, input.std)

    init {
        require(size > 0 && mean.size == 3 && std.size == 3 && cropFraction > 0.0 && cropFraction <= 1.0)
    }

    /** Bytes of one crop as [loadCrop] returns it: size * size pixels * (R, G, B). */
    val cropBytes: Int get() = size * size * 3

    /** Steps 1-4: the size x size centre crop of the picture in [file] as RGB bytes, row-major. */
    fun loadCrop(file: File): ByteArray {
        val bitmap = decode(file)
        val (w, h) = scaledSize(bitmap.width, bitmap.height)
        val scaled = scale(bitmap, w, h)
        val (left, top) = cropOffsets(w, h)
        val argb = IntArray(size * size)
        scaled.getPixels(argb, 0, size, left, top, size, size)
        val rgb = ByteArray(cropBytes)
        for (i in argb.indices) {
            rgb[3 * i] = (argb[i] shr 16).toByte()
            rgb[3 * i + 1] = (argb[i] shr 8).toByte()
            rgb[3 * i + 2] = argb[i].toByte()
        }
        return rgb
    }

    /** Step 1. Throws [IOException] if the file is not a picture BitmapFactory can decode. */
    fun decode(file: File): Bitmap {
        val bounds = BitmapFactory.Options().apply { inJustDecodeBounds = true }
        BitmapFactory.decodeFile(file.path, bounds)
        if (bounds.outWidth <= 0 || bounds.outHeight <= 0) throw IOException("${file.name}: not a readable image")
        var sample = 1 // a power of two, so JPEG decoders shrink in the DCT domain (an average, like step 3)
        while (bounds.outWidth.toLong() / sample * (bounds.outHeight / sample) > MAX_DECODE_PIXELS) sample *= 2
        val options = BitmapFactory.Options().apply {
            inPreferredConfig = Bitmap.Config.ARGB_8888
            inSampleSize = sample
        }
        val decoded = BitmapFactory.decodeFile(file.path, options)
            ?: throw IOException("${file.name}: not a readable image (truncated or corrupt)")
        val oriented = applyExifOrientation(decoded, exifOrientation(file))
        return if (oriented.hasAlpha()) overWhite(oriented) else oriented
    }

    /** Step 2: the scaled size (width, height) whose shorter side is rint(size / cropFraction). */
    fun scaledSize(width: Int, height: Int): Pair<Int, Int> {
        val short = Math.rint(size / cropFraction).toInt()
        return if (width <= height) {
            Pair(short, maxOf(short, Math.rint(height.toDouble() * short / width).toInt()))
        } else {
            Pair(maxOf(short, Math.rint(width.toDouble() * short / height).toInt()), short)
        }
    }

    /** Step 3: 2x2-average halvings while at least twice the target, then one bilinear resize to exactly w x h. */
    fun scale(bitmap: Bitmap, w: Int, h: Int): Bitmap {
        var b = bitmap
        while (b.width >= 2 * w && b.height >= 2 * h) b = Bitmap.createScaledBitmap(b, b.width / 2, b.height / 2, true)
        return if (b.width == w && b.height == h) b else Bitmap.createScaledBitmap(b, w, h, true)
    }

    /** Step 4: (left, top) of the centre crop in a w x h picture. */
    fun cropOffsets(w: Int, h: Int): Pair<Int, Int> = Pair((w - size) / 2, (h - size) / 2)

    /** Step 5: RGB crop -> float32 NHWC values, written at the buffer's start in native byte order. */
    fun normalize(rgb: ByteArray, flip: Boolean, out: ByteBuffer) {
        require(rgb.size == cropBytes && out.capacity() == cropBytes * 4) { "crop or buffer has the wrong size" }
        out.rewind()
        val floats = out.order(ByteOrder.nativeOrder()).asFloatBuffer()
        for (y in 0 until size) {
            for (x in 0 until size) {
                val src = 3 * (y * size + if (flip) size - 1 - x else x)
                for (c in 0 until 3) floats.put(((rgb[src + c].toInt() and 0xFF).toFloat() - mean[c]) / std[c])
            }
        }
        out.rewind()
    }

    /** A crop as a Bitmap, to show the user exactly what the model sees. */
    fun cropToBitmap(rgb: ByteArray): Bitmap {
        val argb = IntArray(size * size) { i ->
            Color.rgb(rgb[3 * i].toInt() and 0xFF, rgb[3 * i + 1].toInt() and 0xFF, rgb[3 * i + 2].toInt() and 0xFF)
        }
        return Bitmap.createBitmap(argb, size, size, Bitmap.Config.ARGB_8888)
    }

    private fun exifOrientation(file: File): Int = try {
        ExifInterface(file.path).getAttributeInt(ExifInterface.TAG_ORIENTATION, ExifInterface.ORIENTATION_NORMAL)
    } catch (e: IOException) {
        ExifInterface.ORIENTATION_NORMAL // no readable EXIF block: the pixels are upright as stored
    }

    /** The 8 EXIF orientations as in PIL's exif_transpose; matrices with whole-pixel steps, so no resampling. */
    private fun applyExifOrientation(bitmap: Bitmap, orientation: Int): Bitmap {
        val m = Matrix()
        when (orientation) {
            ExifInterface.ORIENTATION_FLIP_HORIZONTAL -> m.postScale(-1f, 1f)
            ExifInterface.ORIENTATION_ROTATE_180 -> m.postRotate(180f)
            ExifInterface.ORIENTATION_FLIP_VERTICAL -> m.postScale(1f, -1f)
            ExifInterface.ORIENTATION_TRANSPOSE -> { m.postRotate(90f); m.postScale(-1f, 1f) }
            ExifInterface.ORIENTATION_ROTATE_90 -> m.postRotate(90f)
            ExifInterface.ORIENTATION_TRANSVERSE -> { m.postRotate(-90f); m.postScale(-1f, 1f) }
            ExifInterface.ORIENTATION_ROTATE_270 -> m.postRotate(270f)
            else -> return bitmap
        }
        return Bitmap.createBitmap(bitmap, 0, 0, bitmap.width, bitmap.height, m, false)
    }

    private fun overWhite(bitmap: Bitmap): Bitmap {
        val out = Bitmap.createBitmap(bitmap.width, bitmap.height, Bitmap.Config.ARGB_8888)
        Canvas(out).apply {
            drawColor(Color.WHITE)
            drawBitmap(bitmap, 0f, 0f, null)
        }
        return out
    }

    companion object {
        /** Bigger pictures are decoded at 1/2, 1/4, ... so a 100+ MP photo cannot exhaust the heap (64 MB here). */
        const val MAX_DECODE_PIXELS = 16_000_000L
    }
}
