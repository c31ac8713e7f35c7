package io.github.tinytl.demo

import org.json.JSONObject
import java.io.Closeable
import java.io.DataInputStream
import java.io.File
import java.io.IOException
import java.io.InputStream
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.security.DigestInputStream
import java.security.MessageDigest
import java.util.zip.ZipFile

/**
 * The trainables' initial values, kept beside the model in X.init.npz (model.json "initial_values"): inside the
 * .tflite every variable starts at zero, so no page of the model holds a value that training overwrites, and the
 * model's `load(values, group)` signature assigns them once, group by group, when the model is opened.
 *
 * The file is numpy's uncompressed .npz, a zip of .npy files: `weight/<name>.npy` per trainable tensor (float32,
 * little-endian, C order) and `meta.npy`, a 0-d unicode string (UTF-32LE) holding the JSON {"format": FORMAT,
 * "fingerprint": sha256 of the .tflite}. It is checked as the Python device side checks it: present, its sha256
 * equal to `initial_values.sha256`, readable, of this format and model, every group tensor present with
 * model.json's shape. Values are read on demand, one group at a time, so what is held is one group's worth.
 */
class InitialValues private constructor(
    private val zip: ZipFile,
    private val spec: InitialValuesSpec,
    private val tensors: Map<String, TensorSpec>,
) : Closeable {

    /** Group [j]'s tensors flattened, concatenated and zero-padded into [values] (float32, native order). */
    fun fill(j: Int, values: ByteBuffer) {
        // .npy holds little-endian floats and the interpreter reads native order: every Android ABI is little-endian.
        check(ByteOrder.nativeOrder() == ByteOrder.LITTLE_ENDIAN) { "big-endian device" }
        val b = values.duplicate().also { it.clear() }
        val chunk = ByteArray(1 shl 16)
        for (n in spec.groups[j]) {
            DataInputStream(zip.getInputStream(zip.getEntry(entryName(n))).buffered(1 shl 16)).use { inp ->
                readHeader(inp)
                var left = tensors.getValue(n).byteSize
                while (left > 0) {
                    val k = minOf(chunk.size, left)
                    inp.readFully(chunk, 0, k)
                    b.put(chunk, 0, k)
                    left -= k
                }
            }
        }
        while (b.hasRemaining()) b.put(0)
    }

    override fun close() = zip.close()

    private class NpyHeader(val descr: String, val fortranOrder: Boolean, val shape: List<Int>)

    companion object {
        // tinytl_tf/initial_values.py's FORMAT, WEIGHT_PREFIX and META_KEY; np.savez adds ".npy" to each key.
        const val FORMAT = "tinytl_tf/initial-values-v1"
        private const val WEIGHT_PREFIX = "weight/"
        private const val META_KEY = "meta"
        private const val NPY = ".npy"
        private val NPY_MAGIC = byteArrayOf(0x93.toByte(), 'N'.code.toByte(), 'U'.code.toByte(), 'M'.code.toByte(), 'P'.code.toByte(), 'Y'.code.toByte())
        private val NPY_DICT = Regex("""\{'descr': '([^']*)', 'fortran_order': (True|False), 'shape': \(([0-9, ]*)\), \}""")
        private const val MAX_HEADER = 1 shl 16
        private const val MAX_META_CHARS = 1 shl 16

        private fun entryName(tensor: String) = WEIGHT_PREFIX + tensor + NPY

        /**
         * Copies [input] (the asset [name]) to [copy] while hashing it, so the zip can be read by entry, and checks it
         * against [spec] and the model's [fingerprint]; throws [ModelException] saying what is wrong and what to do.
         */
        fun open(input: InputStream, copy: File, name: String, spec: InitialValuesSpec, fingerprint: String, weights: List<WeightSpec>): InitialValues {
            val md = MessageDigest.getInstance("SHA-256")
            DigestInputStream(input, md).use { src -> copy.outputStream().use { src.copyTo(it, 1 shl 16) } }
            val digest = md.digest().joinToString("") { "%02x".format(it.toInt() and 0xFF) }
            if (digest != spec.sha256) {
                throw ModelException(
                    "assets/$name is not the initial-values file exported with this model: its sha256 is $digest, " +
                        "${Contract.METADATA_FILE} says ${spec.sha256}. Copy the $name exported with ${Contract.MODEL_FILE}."
                )
            }
            val zip = try {
                ZipFile(copy)
            } catch (e: IOException) {
                throw ModelException("assets/$name is unreadable (${e.message ?: e.javaClass.simpleName})", e)
            }
            try {
                val meta = try {
                    JSONObject(readMeta(zip))
                } catch (e: Exception) { // zip, .npy and JSON each signal damaged bytes their own way
                    throw ModelException("assets/$name is unreadable (${e.message ?: e.javaClass.simpleName})", e)
                }
                if (meta.optString("format") != FORMAT || meta.optString("fingerprint") != fingerprint) {
                    throw ModelException("assets/$name holds the initial values of another model (or another format)")
                }
                val tensors = weights.associate { it.name to it.tensor }
                val missing = spec.groups.flatten().filter { zip.getEntry(entryName(it)) == null }
                if (missing.isNotEmpty()) throw ModelException("assets/$name lacks the tensors ${missing.take(5)}")
                for (n in spec.groups.flatten()) {
                    val header = try {
                        DataInputStream(zip.getInputStream(zip.getEntry(entryName(n)))).use(::readHeader)
                    } catch (e: IOException) {
                        throw ModelException("assets/$name is unreadable at $n (${e.message ?: e.javaClass.simpleName})", e)
                    }
                    val want = tensors.getValue(n)
                    if (header.descr != "<f4" || header.fortranOrder || header.shape != want.shape) {
                        throw ModelException("assets/$name holds $n as ${header.descr}${header.shape}; ${Contract.METADATA_FILE} says $want")
                    }
                }
                return InitialValues(zip, spec, tensors)
            } catch (e: Exception) {
                zip.close()
                throw e
            }
        }

        /** meta.npy: a 0-d '<U<n>' array, n UTF-32LE code points (NUL-padded). */
        private fun readMeta(zip: ZipFile): String {
            val entry = zip.getEntry(META_KEY + NPY) ?: throw IOException("no $META_KEY entry")
            DataInputStream(zip.getInputStream(entry)).use { inp ->
                val header = readHeader(inp)
                val chars = header.descr.removePrefix("<U").toIntOrNull()
                if (!header.descr.startsWith("<U") || chars == null || chars !in 0..MAX_META_CHARS || header.shape.isNotEmpty()) {
                    throw IOException("$META_KEY is ${header.descr}${header.shape}, not a string")
                }
                val bytes = ByteArray(4 * chars).also { inp.readFully(it) }
                val codes = ByteBuffer.wrap(bytes).order(ByteOrder.LITTLE_ENDIAN).asIntBuffer()
                val text = StringBuilder()
                for (i in 0 until chars) {
                    val c = codes.get(i)
                    if (c == 0) break
                    text.appendCodePoint(c)
                }
                return text.toString()
            }
        }

        /** The .npy header (format versions 1 to 3): magic, version, little-endian length, a Python dict literal. */
        private fun readHeader(inp: DataInputStream): NpyHeader {
            val magic = ByteArray(NPY_MAGIC.size).also { inp.readFully(it) }
            if (!magic.contentEquals(NPY_MAGIC)) throw IOException("not an .npy entry")
            val major = inp.readUnsignedByte()
            inp.readUnsignedByte()
            val len = when (major) {
                1 -> inp.readUnsignedByte() or (inp.readUnsignedByte() shl 8)
                2, 3 -> Integer.reverseBytes(inp.readInt())
                else -> throw IOException(".npy version $major")
            }
            if (len !in 0..MAX_HEADER) throw IOException(".npy header of $len bytes")
            val text = String(ByteArray(len).also { inp.readFully(it) }, if (major == 3) Charsets.UTF_8 else Charsets.ISO_8859_1)
            val m = NPY_DICT.matchEntire(text.trimEnd()) ?: throw IOException(".npy header ${text.trim().take(100)}")
            val shape = m.groupValues[3].split(',').map { it.trim() }.filter { it.isNotEmpty() }.map {
                it.toIntOrNull() ?: throw IOException(".npy shape (${m.groupValues[3]})")
            }
            return NpyHeader(m.groupValues[1], m.groupValues[2] == "True", shape)
        }
    }
}
