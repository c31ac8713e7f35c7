package io.github.tinytl.demo

import java.io.BufferedOutputStream
import java.io.DataInputStream
import java.io.DataOutputStream
import java.io.EOFException
import java.io.File
import java.io.FileOutputStream
import java.io.FilterInputStream
import java.io.InputStream
import java.io.IOException
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.channels.FileChannel
import java.nio.file.Files
import java.nio.file.StandardCopyOption
import java.nio.file.StandardOpenOption
import java.util.zip.CRC32

/**
 * The trained tensors (everything get_weights returns) in one file, replaced atomically.
 *
 * File format, version 1. Integers big-endian; a "str" is a u16 byte length followed by that many UTF-8 bytes.
 *
 *     magic        4 bytes   "TTLW"
 *     version      u16       1
 *     fingerprint  str       model.json "fingerprint" (sha256 hex of the .tflite) the tensors belong to
 *     count        u32       number of tensors
 *     count times:
 *       name       str       model.json weight name
 *       dtype      str       model.json dtype ("float32", "int32", "int64", ...)
 *       rank       u8
 *       dims       rank x u32
 *       nbytes     u64       prod(dims) * itemsize
 *     payload_len  u64       sum of nbytes
 *     payload_crc  u32       CRC-32 (zlib.crc32) of the payload
 *     payload      payload_len bytes: each tensor's raw little-endian bytes, concatenated in header order
 *     (nothing after the payload)
 *
 * In Python: struct.unpack(">4sH", ...), names .decode("utf-8"), np.frombuffer(payload[o:o + n], "<f4") etc.
 *
 * Writing goes to a temporary file in the same directory, is flushed and fsync'ed, then renamed over the old file
 * (rename within one directory is atomic on Linux), so a crash leaves the old file or the new one, never half of
 * one. Reading never throws: a missing, truncated, corrupt or foreign file comes back as [Loaded.Rejected].
 */
class WeightStore(val file: File) {

    sealed class Loaded {
        object Missing : Loaded()
        class Rejected(val reason: String) : Loaded()
        class Ok(val tensors: Tensors) : Loaded()
    }

    /** Writes [tensors] (in model.json weights order) for the model with [fingerprint]. */
    fun save(fingerprint: String, weights: List<WeightSpec>, tensors: Map<String, ByteBuffer>) {
        // Payload bytes are the interpreter's native order; every Android ABI is little-endian, the format says so.
        check(ByteOrder.nativeOrder() == ByteOrder.LITTLE_ENDIAN) { "big-endian device" }
        val crc = CRC32()
        var payloadLen = 0L
        for (w in weights) {
            val b = tensors.getValue(w.name)
            check(b.capacity() == w.tensor.byteSize) { "tensor ${w.name} has ${b.capacity()} bytes" }
            crc.update(b.duplicate().also { it.clear() })
            payloadLen += b.capacity()
        }
        val dir = file.absoluteFile.parentFile ?: throw IOException("no directory for $file")
        dir.mkdirs()
        val tmp = File(dir, file.name + ".tmp")
        FileOutputStream(tmp).use { fos ->
            val out = DataOutputStream(BufferedOutputStream(fos, 1 shl 16))
            out.write(MAGIC)
            out.writeShort(VERSION)
            out.writeStr(fingerprint)
            out.writeInt(weights.size)
            for (w in weights) {
                out.writeStr(w.name)
                out.writeStr(w.tensor.dtype)
                out.writeByte(w.tensor.shape.size)
                w.tensor.shape.forEach { out.writeInt(it) }
                out.writeLong(w.tensor.byteSize.toLong())
            }
            out.writeLong(payloadLen)
            out.writeInt(crc.value.toInt())
            val chunk = ByteArray(1 shl 16)
            for (w in weights) {
                val b = tensors.getValue(w.name).duplicate().also { it.clear() }
                while (b.hasRemaining()) {
                    val n = minOf(chunk.size, b.remaining())
                    b.get(chunk, 0, n)
                    out.write(chunk, 0, n)
                }
            }
            out.flush()
            fos.fd.sync() // the bytes are on disk before the rename makes them the current file
        }
        Files.move(tmp.toPath(), file.toPath(), StandardCopyOption.ATOMIC_MOVE)
        syncDirectory(dir)
    }

    /** Reads the file and checks it against model.json's [fingerprint] and [weights]; never throws. */
    fun load(fingerprint: String, weights: List<WeightSpec>): Loaded {
        if (!file.exists()) return Loaded.Missing
        return try {
            read(fingerprint, weights)
        } catch (e: EOFException) {
            Loaded.Rejected("the file is truncated")
        } catch (e: OutOfMemoryError) {
            Loaded.Rejected("the file is too large to read")
        } catch (e: Exception) {
            Loaded.Rejected("the file is unreadable (${e.message ?: e.javaClass.simpleName})")
        }
    }

    fun delete() {
        file.delete()
    }

    private fun read(fingerprint: String, weights: List<WeightSpec>): Loaded {
        val fileLen = file.length()
        val counter = CountingInputStream(file.inputStream().buffered(1 shl 16))
        DataInputStream(counter).use { inp ->
            val magic = ByteArray(MAGIC.size).also { inp.readFully(it) }
            if (!magic.contentEquals(MAGIC)) return Loaded.Rejected("it is not a weight file of this app")
            val version = inp.readUnsignedShort()
            if (version != VERSION) return Loaded.Rejected("it has format version $version, this app reads $VERSION")
            val savedFor = inp.readStr()
            if (savedFor != fingerprint) {
                return Loaded.Rejected("it was saved for another model (${savedFor.take(12)}…, this one is ${fingerprint.take(12)}…)")
            }
            val count = inp.readInt()
            if (count < 0 || count > MAX_TENSORS) return Loaded.Rejected("the header is corrupt ($count tensors)")
            val specs = ArrayList<TensorSpec>(minOf(count, weights.size))
            var sum = 0L
            repeat(count) {
                val name = inp.readStr()
                val dtype = inp.readStr()
                val rank = inp.readUnsignedByte()
                if (rank > MAX_RANK) return Loaded.Rejected("the header is corrupt (rank $rank)")
                val dims = List(rank) { inp.readInt() }
                val nbytes = inp.readLong()
                val spec = TensorSpec(name, dims, dtype)
                val expected = try {
                    spec.byteSize.toLong()
                } catch (e: Exception) { // an unknown dtype, or a size beyond an Int
                    -1L
                }
                if (dims.any { it < 0 } || nbytes != expected) return Loaded.Rejected("the header is corrupt (tensor $name)")
                specs += spec
                sum += nbytes
            }
            val payloadLen = inp.readLong()
            val storedCrc = inp.readInt().toLong() and 0xFFFFFFFFL
            if (payloadLen != sum) return Loaded.Rejected("the header is corrupt (payload length)")
            val rest = fileLen - counter.count
            if (rest < payloadLen) return Loaded.Rejected("the file is truncated")
            if (rest > payloadLen) return Loaded.Rejected("the file has trailing bytes")
            if (specs != weights.map { it.tensor }) {
                return Loaded.Rejected("its tensors differ from ${Contract.METADATA_FILE}'s weights")
            }
            val crc = CRC32()
            val tensors = Tensors()
            val chunk = ByteArray(1 shl 16)
            for (spec in specs) {
                val b = ByteBuffer.allocateDirect(spec.byteSize).order(ByteOrder.nativeOrder())
                while (b.hasRemaining()) {
                    val n = minOf(chunk.size, b.remaining())
                    inp.readFully(chunk, 0, n)
                    crc.update(chunk, 0, n)
                    b.put(chunk, 0, n)
                }
                b.rewind()
                tensors[spec.name] = b
            }
            if (crc.value != storedCrc) return Loaded.Rejected("the file is corrupt (CRC mismatch)")
            return Loaded.Ok(tensors)
        }
    }

    /** Counts the bytes the header parser consumed, to compare what is left with payload_len before reading it. */
    private class CountingInputStream(inp: InputStream) : FilterInputStream(inp) {
        var count = 0L
            private set

        override fun read(): Int = super.read().also { if (it >= 0) count++ }
        override fun read(b: ByteArray, off: Int, len: Int): Int = super.read(b, off, len).also { if (it > 0) count += it }
        override fun skip(n: Long): Long = super.skip(n).also { count += it }
    }

    private fun DataOutputStream.writeStr(s: String) {
        val bytes = s.toByteArray(Charsets.UTF_8)
        require(bytes.size <= 0xFFFF) { "string too long" }
        writeShort(bytes.size)
        write(bytes)
    }

    private fun DataInputStream.readStr(): String {
        val bytes = ByteArray(readUnsignedShort())
        readFully(bytes)
        return String(bytes, Charsets.UTF_8)
    }

    /** Makes the rename itself durable. Best effort: not every file system lets an app open a directory. */
    private fun syncDirectory(dir: File) {
        try {
            FileChannel.open(dir.toPath(), StandardOpenOption.READ).use { it.force(true) }
        } catch (e: IOException) {
            // The data is synced; at worst a power cut right now brings back the previous file.
        }
    }

    companion object {
        private val MAGIC = "TTLW".toByteArray(Charsets.US_ASCII)
        private const val VERSION = 1
        private const val MAX_TENSORS = 1_000_000
        private const val MAX_RANK = 16
    }
}
